package atomspherecors

import (
	"atomspherecors/internal/quote"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// A config is checked in one place, newIndex, for JSON, admin-API edits
// and Caddyfiles alike. Each problem found carries its place in the
// config, so that the Caddyfile adapter can point at the line it came
// from, and the report of a refused config is bounded: a config of any
// size yields a short answer (docs/behaviour.md §7).

// place says where in a config a problem is.
type place struct {
	field   string // the JSON key: "path_prefixes", "allow_headers", ..., "accounts"
	account string // with "accounts": the account ID
	rule    int    // with "accounts": the rule's index, or -1 for the account itself
}

// configError is one problem of a config and its place.
type configError struct {
	at  place
	err error
}

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

// maxProblems is the number of problems a report spells out; the rest
// are counted.
const maxProblems = 20

// problems collects the problems of one config, in config order, the
// first maxProblems of them in full.
type problems struct {
	list []*configError
	more int
}

// full reports whether further problems are only counted: callers skip
// building their messages then.
func (p *problems) full() bool { return len(p.list) >= maxProblems }

func (p *problems) add(at place, err error) {
	if p.full() {
		p.more++
		return
	}
	p.list = append(p.list, &configError{at: at, err: err})
}

// skip counts a problem whose message was not built.
func (p *problems) skip() { p.more++ }

// err is the report: nil without problems, else every listed problem on
// its own line, then how many more there are.
func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &report{list: p.list, more: p.more}
}

// report is the error of a refused config.
type report struct {
	list []*configError
	more int
}

func (r *report) Error() string {
	var b strings.Builder
	for i, e := range r.list {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	if r.more > 0 {
		fmt.Fprintf(&b, "\nand %d more problems", r.more)
	}
	return b.String()
}

// Unwrap gives errors.Is and errors.As every listed problem.
func (r *report) Unwrap() []error {
	errs := make([]error, len(r.list))
	for i, e := range r.list {
		errs[i] = e
	}
	return errs
}

// located is a problem with the file and line it comes from.
type located struct {
	msg  string
	file string
	line int
}

// locate places each listed problem at the position pos finds for it.
func (r *report) locate(pos func(place) (file string, line int)) []located {
	out := make([]located, len(r.list))
	for i, e := range r.list {
		file, line := pos(e.at)
		out[i] = located{e.Error(), file, line}
	}
	return out
}

// joinLocated is the report of a Caddyfile: its problems in the order of
// their lines, each followed by its position, then how many more.
func joinLocated(list []located, more int) error {
	if len(list) == 0 {
		return nil
	}
	slices.SortStableFunc(list, func(a, b located) int { return a.line - b.line })
	errs := make([]error, 0, len(list)+1)
	for _, l := range list {
		if l.file == "" {
			errs = append(errs, errors.New(l.msg))
			continue
		}
		errs = append(errs, fmt.Errorf("%s, at %s:%d", l.msg, l.file, l.line))
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
