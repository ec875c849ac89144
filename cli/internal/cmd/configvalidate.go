package cmd

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/config"
)

func newConfigValidateCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check constellation-conf.yaml and list every problem",
		Long: `Check the workspace's constellation-conf.yaml: unknown or misspelt fields, values of the
wrong type, and every validation rule. All problems are listed at once, each with its field
and line. The exit code is 1 when the configuration is invalid.`,
		Example: `  constellation config validate
  constellation -C mycluster config validate -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := outputFormat(cmd)
			if err != nil {
				return err
			}
			_, loadErr := config.Load(e.files, config.FileName)
			if format == outputJSON {
				return e.printValidationJSON(loadErr)
			}
			if loadErr != nil {
				return fmt.Errorf("%s: %w", e.path(config.FileName), loadErr)
			}
			_, err = fmt.Fprintf(e.out, "%s is valid.\n", e.path(config.FileName))
			return err
		},
	}
	addOutputFlag(cmd)
	return cmd
}

type validationProblem struct {
	Field   string `json:"field,omitempty"`
	Line    int    `json:"line,omitempty"`
	Message string `json:"message"`
}

type validationResult struct {
	File     string              `json:"file"`
	Valid    bool                `json:"valid"`
	Problems []validationProblem `json:"problems"`
}

func (e *env) printValidationJSON(loadErr error) error {
	res := validationResult{File: e.path(config.FileName), Valid: loadErr == nil, Problems: []validationProblem{}}
	for _, leaf := range leafErrors(loadErr) {
		var fe *config.FieldError
		if errors.As(leaf, &fe) {
			res.Problems = append(res.Problems, validationProblem{Field: fe.Field, Line: fe.Line, Message: fe.Err.Error()})
		} else {
			res.Problems = append(res.Problems, validationProblem{Message: leaf.Error()})
		}
	}
	enc := json.NewEncoder(e.out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	if loadErr != nil {
		return &exitError{code: 1, reported: true, err: loadErr}
	}
	return nil
}

// leafErrors flattens joined errors down to the individual problems. A FieldError is a leaf.
func leafErrors(err error) []error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*config.FieldError); ok {
		return []error{err}
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, inner := range joined.Unwrap() {
			// fmt.Errorf with two %w wraps the sentinel first; it carries no problem of its own.
			if errors.Is(inner, config.ErrInvalid) && inner == config.ErrInvalid {
				continue
			}
			out = append(out, leafErrors(inner)...)
		}
		return out
	}
	if inner := errors.Unwrap(err); inner != nil {
		return leafErrors(inner)
	}
	return []error{err}
}
