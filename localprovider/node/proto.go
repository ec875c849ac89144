package node

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/constellation-go/constellation/internal/measurements/precompute"
)

// The start-up protocol between Start (the parent) and the init, one JSON object per line over a socket
// pair (the init's file descriptor 3); see the package documentation.
const (
	// msgConfig (parent → init) carries the initConfig.
	msgConfig = "config"
	// msgPhase (init → parent) asks the parent to enter a launcher phase; the parent answers msgAck or
	// msgError.
	msgPhase = "phase"
	// msgAck (parent → init) confirms a phase.
	msgAck = "ack"
	// msgRunning (init → parent): every service has been started.
	msgRunning = "running"
	// msgError (either way) ends the start.
	msgError = "error"
)

// Phases the init asks for, in order.
const (
	phaseSysinit = precompute.PhaseSysinit
	phaseReady   = precompute.PhaseReady
)

type message struct {
	Type   string      `json:"type"`
	Phase  string      `json:"phase,omitempty"`
	Error  string      `json:"error,omitempty"`
	Config *initConfig `json:"config,omitempty"`
}

// initConfig is what the init needs to know; host paths are valid until it pivots.
type initConfig struct {
	Hostname  string `json:"hostname"`
	NodeIP    string `json:"nodeIP"`
	MachineID string `json:"machineID"`

	// Host paths.
	Rootfs        string `json:"rootfs"`
	Scratch       string `json:"scratch"`
	StateDisk     string `json:"stateDisk"`
	VTPMSocket    string `json:"vtpmSocket"`
	EventLogDir   string `json:"eventLogDir"`
	ControlSocket string `json:"controlSocket"`
	LogDir        string `json:"logDir"`

	// Cgroups are the v1 hierarchies to mount; CgroupLinks the symbolic links beside them.
	Cgroups     []hierarchy       `json:"cgroups"`
	CgroupLinks map[string]string `json:"cgroupLinks"`

	ContainerdConfig  string        `json:"containerdConfig"`
	ContainerdTimeout time.Duration `json:"containerdTimeout"`
	BootstrapperArgs  []string      `json:"bootstrapperArgs"`
	BootstrapperEnv   []string      `json:"bootstrapperEnv"`
}

type messenger struct {
	enc *json.Encoder
	dec *json.Decoder
}

func newMessenger(rw io.ReadWriter) *messenger {
	return &messenger{enc: json.NewEncoder(rw), dec: json.NewDecoder(rw)}
}

func (m *messenger) send(msg message) error {
	if err := m.enc.Encode(msg); err != nil {
		return fmt.Errorf("sending %s: %w", msg.Type, err)
	}
	return nil
}

func (m *messenger) receive() (message, error) {
	var msg message
	if err := m.dec.Decode(&msg); err != nil {
		return message{}, err
	}
	return msg, nil
}
