// Package flagenv binds command-line flags to environment variables: each
// flag's default comes from its variable when that is set, so a flag given
// on the command line wins over the environment, which wins over the
// built-in default. Usage text names the variable of every flag.
package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Set is a flag.FlagSet whose flags may also come from the environment.
type Set struct {
	*flag.FlagSet
	getenv func(string) string
	errs   []error
	// Notes follow the flags in the usage text: settings read from the
	// environment only, which no flag names.
	Notes string
}

// New returns a Set reading variables through getenv.
func New(fs *flag.FlagSet, getenv func(string) string) *Set {
	return &Set{FlagSet: fs, getenv: getenv}
}

func (s *Set) env(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	v := strings.TrimSpace(s.getenv(name))
	return v, v != ""
}

func usage(text, env string) string {
	if env == "" {
		return text
	}
	return text + " (env " + env + ")"
}

// ErrEnvironment marks an error in an environment variable, as opposed to
// a bad flag, which the flag package has already reported with the usage.
var ErrEnvironment = errors.New("bad environment variable")

func (s *Set) fail(env, val string, err error) {
	s.errs = append(s.errs, fmt.Errorf("%w %s=%q: %w", ErrEnvironment, env, val, err))
}

// String defines a string flag.
func (s *Set) String(p *string, name, env, def, text string) {
	if v, ok := s.env(env); ok {
		def = v
	}
	s.StringVar(p, name, def, usage(text, env))
}

// Bool defines a boolean flag.
func (s *Set) Bool(p *bool, name, env string, def bool, text string) {
	if v, ok := s.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.fail(env, v, errors.New("want true or false"))
		}
		def = b
	}
	s.BoolVar(p, name, def, usage(text, env))
}

// Int defines an integer flag.
func (s *Set) Int(p *int, name, env string, def int, text string) {
	if v, ok := s.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			s.fail(env, v, errors.New("want a whole number"))
		}
		def = n
	}
	s.IntVar(p, name, def, usage(text, env))
}

// Float defines a floating-point flag.
func (s *Set) Float(p *float64, name, env string, def float64, text string) {
	if v, ok := s.env(env); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			s.fail(env, v, errors.New("want a number"))
		}
		def = f
	}
	s.Float64Var(p, name, def, usage(text, env))
}

// Duration defines a duration flag ("30s", "5m").
func (s *Set) Duration(p *time.Duration, name, env string, def time.Duration, text string) {
	if v, ok := s.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			s.fail(env, v, errors.New("want a duration such as 30s"))
		}
		def = d
	}
	s.DurationVar(p, name, def, usage(text, env))
}

// List defines a comma-separated list flag.
func (s *Set) List(p *[]string, name, env string, def []string, text string) {
	if v, ok := s.env(env); ok {
		def = Split(v)
	}
	*p = def
	s.Func(name, usage(text+" (comma separated)", env), func(v string) error {
		*p = Split(v)
		return nil
	})
}

// ErrUsage marks a command line that does not parse.
var ErrUsage = errors.New("bad command line")

// usageError is a command-line error that reads as its own message and
// matches [ErrUsage].
type usageError struct{ error }

func (usageError) Is(target error) bool { return target == ErrUsage }

// Parse parses args. A bad environment variable or flag comes back as one
// line (wrapping [ErrEnvironment] or [ErrUsage]) instead of the whole
// usage; -h prints the usage and returns flag.ErrHelp.
func (s *Set) Parse(args []string) error {
	if len(s.errs) > 0 {
		return s.errs[0]
	}
	out := s.Output()
	s.SetOutput(io.Discard)
	err := s.FlagSet.Parse(args)
	s.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintf(out, "Usage of %s:\n", s.Name())
		s.PrintDefaults()
		fmt.Fprint(out, s.Notes)
		return err
	case err != nil:
		return usageError{fmt.Errorf("%w (run %s -h for the flags)", err, s.Name())}
	case s.NArg() > 0:
		return usageError{fmt.Errorf("unexpected argument %q (run %s -h for the flags)", s.Arg(0), s.Name())}
	}
	return nil
}

// Split splits a comma-separated list, dropping empty items.
func Split(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// Int64 defines a 64-bit integer flag.
func (s *Set) Int64(p *int64, name, env string, def int64, text string) {
	if v, ok := s.env(env); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			s.fail(env, v, errors.New("want a whole number"))
		}
		def = n
	}
	s.Int64Var(p, name, def, usage(text, env))
}

// Uint32 defines a flag holding a non-negative 32-bit integer.
func (s *Set) Uint32(p *uint32, name, env string, def uint32, text string) {
	parse := func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return errors.New("want a whole number from 0 to 4294967295")
		}
		*p = uint32(n)
		return nil
	}
	*p = def
	if v, ok := s.env(env); ok {
		if err := parse(v); err != nil {
			s.fail(env, v, err)
		}
	}
	s.Func(name, usage(text, env), parse)
}

// Exit ends a command after run returned err: silently with 0 for success
// or -h, otherwise with the error on one line of stderr and 2 for a bad
// command line, 1 for anything else.
func Exit(name string, err error) {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	if errors.Is(err, ErrUsage) {
		os.Exit(2)
	}
	os.Exit(1)
}
