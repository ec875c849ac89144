package service

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/constellation-go/constellation/internal/ratelimit"
)

// ParseFlags parses args into fs; a flag not given on the command line takes its value from the environment
// variable PREFIX_FLAG_NAME (e.g. KEYSERVICE_KMS_URI for --kms-uri), which is how Kubernetes manifests
// configure the services.
func ParseFlags(fs *flag.FlagSet, prefix string, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := prefix + "_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment variable %s: %w", env, e)
			}
		}
	})
	return err
}

// NewLogger returns a JSON (or text) logger at level ("debug", "info", "warn", "error").
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: use json or text", format)
}

// LogFlags adds --log-level and --log-format to fs.
func LogFlags(fs *flag.FlagSet) (level, format *string) {
	return fs.String("log-level", "info", "log level: debug, info, warn or error"),
		fs.String("log-format", "json", "log format: json or text")
}

// RateLimitFlags adds --rate-limit and --rate-burst, the per-source limit of an endpoint whose every use
// costs a TPM quote, with the given defaults. The returned function builds the limiter after parsing.
func RateLimitFlags(fs *flag.FlagSet, perSecond float64, burst int) func() (*ratelimit.PerSource, error) {
	rateFlag := fs.Float64("rate-limit", perSecond, "requests (and new connections) per second allowed from one source IP on average")
	burstFlag := fs.Int("rate-burst", burst, "requests (and new connections) one source IP may make at once")
	return func() (*ratelimit.PerSource, error) {
		if *rateFlag <= 0 || *burstFlag <= 0 {
			return nil, fmt.Errorf("--rate-limit and --rate-burst must be positive (got %g and %d)", *rateFlag, *burstFlag)
		}
		return ratelimit.New(*rateFlag, *burstFlag), nil
	}
}
