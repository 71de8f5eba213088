package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"atomspherecors/internal/quote"
)

// A config is checked in one place, newIndex, for JSON, admin-API edits
// and Caddyfiles alike. Each problem found carries its place in the
// config, so that the Caddyfile adapter can point at the line it came
// from, and the report of a refused config is bounded: a config of any
// size yields a short answer (docs/behaviour.md §7).

// Place says where in a config a problem is.
type Place struct {
	Field   string // the JSON key: "path_prefixes", "allow_headers", ..., "accounts"
	Account string // with "accounts": the account ID
	Rule    int    // with "accounts": the rule's index, or -1 for the account itself
	Part    string // with a rule: "origin" or "methods", the part at fault
}

// configError is one problem of a config and its place.
type configError struct {
	At  Place // where the problem is
	err error
}

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

// MaxProblems is the number of problems a report spells out; the rest
// are counted.
const MaxProblems = 20

// Problems collects the problems of one config, in config order, the
// first maxProblems of them in full.
type Problems struct {
	list []*configError
	more int
}

// full reports whether further problems are only counted: callers skip
// building their messages then.
func (p *Problems) full() bool { return len(p.list) >= MaxProblems }

func (p *Problems) Add(at Place, err error) {
	if p.full() {
		p.more++
		return
	}
	p.list = append(p.list, &configError{At: at, err: err})
}

// Skip counts a problem whose message was not built.
func (p *Problems) Skip() { p.more++ }

// Err is the report: nil without problems, else every listed problem on
// its own line, then how many more there are.
func (p *Problems) Err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &Report{List: p.list, More: p.more}
}

// Report is the error of a refused config.
type Report struct {
	List []*configError
	More int
}

// Problem is one listed problem of a report: its place, its message and
// the error it wraps (for a caller that words it for someone else).
type Problem struct {
	At  Place
	Msg string
	Err error
}

// Problems lists the report's spelled-out problems.
func (r *Report) Problems() []Problem {
	out := make([]Problem, len(r.List))
	for i, e := range r.List {
		out[i] = Problem{At: e.At, Msg: e.Error(), Err: errors.Unwrap(e.err)}
		if out[i].Err == nil {
			out[i].Err = e.err
		}
	}
	return out
}

func (r *Report) Error() string {
	var b strings.Builder
	for i, e := range r.List {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	if r.More > 0 {
		fmt.Fprintf(&b, "\nand %d more problems", r.More)
	}
	return b.String()
}

// Unwrap gives errors.Is and errors.As every listed problem.
func (r *Report) Unwrap() []error {
	errs := make([]error, len(r.List))
	for i, e := range r.List {
		errs[i] = e
	}
	return errs
}

// Located is a problem with the file and line it comes from.
type Located struct {
	Msg  string
	File string
	Line int
}

// Locate places each listed problem at the position pos finds for it.
func (r *Report) Locate(pos func(Place) (file string, line int)) []Located {
	out := make([]Located, len(r.List))
	for i, e := range r.List {
		file, line := pos(e.At)
		out[i] = Located{e.Error(), file, line}
	}
	return out
}

// JoinLocated is the report of a Caddyfile: its problems in the order of
// their lines, each followed by its position, then how many more.
func JoinLocated(list []Located, more int) error {
	if len(list) == 0 {
		return nil
	}
	slices.SortStableFunc(list, func(a, b Located) int { return a.Line - b.Line })
	errs := make([]error, 0, len(list)+1)
	for _, l := range list {
		if l.File == "" {
			errs = append(errs, errors.New(l.Msg))
			continue
		}
		errs = append(errs, fmt.Errorf("%s, at %s:%d", l.Msg, l.File, l.Line))
	}
	if more > 0 {
		errs = append(errs, fmt.Errorf("and %d more problems", more))
	}
	return errors.Join(errs...)
}

// q quotes a value of the config for a message, shortened when long.
func q(s string) string { return quote.Value(s) }

// short shortens a message from elsewhere that may repeat a long value.
func short(msg string) string { return quote.Message(msg) }
