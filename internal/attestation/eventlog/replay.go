package eventlog

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"slices"
)

// startupLocalitySignature opens the EV_NO_ACTION event that records from which locality the TPM was
// started; it changes the value PCR 0 starts from, so replay must honour it or PCR 0 never matches.
const startupLocalitySignature = "StartupLocality\x00"

func newHash(alg Alg) (func() hash.Hash, bool) {
	switch alg {
	case AlgSHA1:
		return sha1.New, true
	case AlgSHA256:
		return sha256.New, true
	case AlgSHA384:
		return sha512.New384, true
	case AlgSHA512:
		return sha512.New, true
	}
	return nil, false
}

// ExtendSHA256 returns SHA-256(pcr || digest), the TPM2_PCR_Extend operation on a SHA-256 bank. It is
// exported so that packages which predict PCR values compute them exactly as Replay does. pcr is used as
// given: the value of a freshly reset PCR is 32 zero bytes, not nil.
func ExtendSHA256(pcr, digest []byte) []byte {
	h := sha256.New()
	h.Write(pcr)
	h.Write(digest)
	return h.Sum(nil)
}

// startupLocality reports whether e is a StartupLocality event and, if so, its locality.
func startupLocality(e Event) (locality byte, ok bool, err error) {
	if e.Type != EvNoAction || !bytes.HasPrefix(e.Data, []byte(startupLocalitySignature)) {
		return 0, false, nil
	}
	if len(e.Data) < len(startupLocalitySignature)+1 {
		return 0, true, fmt.Errorf("StartupLocality event %d has no locality byte", e.Index)
	}
	return e.Data[len(startupLocalitySignature)], true, nil
}

// StartupLocality returns the locality the log's StartupLocality event names, and whether it has one.
func (l *Log) StartupLocality() (byte, bool, error) {
	for _, e := range l.Events {
		if loc, ok, err := startupLocality(e); ok || err != nil {
			return loc, ok, err
		}
	}
	return 0, false, nil
}

// Replay computes the final values of the PCRs the log extends in the bank of alg. EV_NO_ACTION events are
// not extended; a StartupLocality EV_NO_ACTION event sets PCR 0's starting value to a zero buffer whose last
// byte is the locality, as the TPM does when started from a locality other than 0. PCRs no event extends
// are absent from the result.
func (l *Log) Replay(alg Alg) (map[uint32][]byte, error) {
	size, ok := l.Algorithms[alg]
	if !ok {
		return nil, fmt.Errorf("replaying the %s bank: the log has no %s digests (its Spec ID event announces %s)",
			alg, alg, algList(l.Algorithms))
	}
	newH, ok := newHash(alg)
	if !ok {
		return nil, fmt.Errorf("replaying the %s bank: replaying %s is not supported", alg, alg)
	}
	if h := newH(); h.Size() != size {
		// Parse rejects wrong sizes for known algorithms; this guards a Log built by hand.
		return nil, fmt.Errorf("replaying the %s bank: log announces %d-byte digests, want %d", alg, size, h.Size())
	}

	pcrs := map[uint32][]byte{}
	var pcr0Start []byte
	localityEvent := -1
	for _, e := range l.Events {
		if e.Type == EvNoAction {
			loc, isLocality, err := startupLocality(e)
			if err != nil {
				return nil, fmt.Errorf("replaying the %s bank: %w", alg, err)
			}
			if !isLocality {
				continue
			}
			// Firmware logs the locality before anything is measured into PCR 0; one that comes later or
			// twice would make the starting value ambiguous.
			if localityEvent >= 0 {
				return nil, fmt.Errorf("replaying the %s bank: second StartupLocality event %d (first was event %d)",
					alg, e.Index, localityEvent)
			}
			if _, extended := pcrs[0]; extended {
				return nil, fmt.Errorf("replaying the %s bank: StartupLocality event %d comes after PCR 0 was extended",
					alg, e.Index)
			}
			localityEvent = e.Index
			pcr0Start = make([]byte, size)
			pcr0Start[size-1] = loc
			continue
		}
		digest, ok := e.Digests[alg]
		if !ok {
			return nil, fmt.Errorf("replaying the %s bank: event %d (%s) has no %s digest", alg, e.Index, e.Description(), alg)
		}
		if len(digest) != size {
			return nil, fmt.Errorf("replaying the %s bank: event %d (%s) has a %d-byte %s digest, want %d",
				alg, e.Index, e.Description(), len(digest), alg, size)
		}
		cur, ok := pcrs[e.PCR]
		if !ok {
			cur = make([]byte, size)
			if e.PCR == 0 && pcr0Start != nil {
				cur = pcr0Start
			}
		}
		h := newH()
		h.Write(cur)
		h.Write(digest)
		pcrs[e.PCR] = h.Sum(nil)
	}
	return pcrs, nil
}

// EventsFor returns, in log order, the events that determine the value of pcr: the events extended into it
// and, for PCR 0, a StartupLocality event. Informational EV_NO_ACTION events are left out because they
// cannot explain a mismatch.
func (l *Log) EventsFor(pcr uint32) []Event {
	var out []Event
	for _, e := range l.Events {
		if e.Type == EvNoAction {
			if _, isLocality, _ := startupLocality(e); !isLocality || pcr != 0 {
				continue
			}
		} else if e.PCR != pcr {
			continue
		}
		out = append(out, e)
	}
	return out
}

// Mismatch describes a PCR whose quoted value the log does not reproduce.
type Mismatch struct {
	PCR uint32
	// Quoted is the value the TPM reported.
	Quoted []byte
	// Replayed is the value the log produces; for a PCR the log never extends it is the PCR's reset value.
	Replayed []byte
	// Events are the events that make up the replayed value (see EventsFor), empty if there are none.
	Events []Event
}

// Diff replays the log in the bank of alg and returns, ordered by PCR, every PCR in quoted whose value the
// log does not reproduce, together with the events that make it up, so that a verifier can say which
// measurements to look at instead of only "PCR 4 differs". PCRs the log extends but quoted lacks are not
// compared: a quote usually covers a selection.
func (l *Log) Diff(alg Alg, quoted map[uint32][]byte) ([]Mismatch, error) {
	replayed, err := l.Replay(alg)
	if err != nil {
		return nil, err
	}
	size := l.Algorithms[alg]
	pcrs := make([]uint32, 0, len(quoted))
	for pcr := range quoted {
		pcrs = append(pcrs, pcr)
	}
	slices.Sort(pcrs)

	var out []Mismatch
	for _, pcr := range pcrs {
		q := quoted[pcr]
		if len(q) != size {
			return nil, fmt.Errorf("quoted PCR %d is %d bytes, want %d for %s", pcr, len(q), size, alg)
		}
		want, ok := replayed[pcr]
		if !ok {
			want = resetValue(pcr, size)
		}
		if bytes.Equal(q, want) {
			continue
		}
		out = append(out, Mismatch{PCR: pcr, Quoted: q, Replayed: want, Events: l.EventsFor(pcr)})
	}
	return out, nil
}

// resetValue is what a PCR holds after TPM2_Startup when nothing was extended: PC Client PCRs 17 to 22
// (dynamic root of trust) start as all ones, all others as zeros.
func resetValue(pcr uint32, size int) []byte {
	v := make([]byte, size)
	if pcr >= 17 && pcr <= 22 {
		for i := range v {
			v[i] = 0xFF
		}
	}
	return v
}

// String renders a mismatch on one line for logs and errors.
func (m Mismatch) String() string {
	return fmt.Sprintf("PCR %d: quoted %s, log replays to %s from %d events",
		m.PCR, hex.EncodeToString(m.Quoted), hex.EncodeToString(m.Replayed), len(m.Events))
}
