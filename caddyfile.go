package atomspherecors

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"atomspherecors/internal/policy"
)

func init() {
	registerDirective[Handler]("atomsphere_cors", "basic_auth")
}

// caddyfileModule is a handler module that reads its directive's
// Caddyfile tokens itself: *T.
type caddyfileModule[T any] interface {
	*T
	caddyfile.Unmarshaler
	caddyhttp.MiddlewareHandler
}

// registerDirective registers the handler directive name, read by a T,
// in Caddy's directive order just before the directive before.
func registerDirective[T any, PT caddyfileModule[T]](name, before string) {
	httpcaddyfile.RegisterHandlerDirective(name, parseDirective[T, PT])
	httpcaddyfile.RegisterDirectiveOrder(name, httpcaddyfile.Before, before)
}

// parseDirective is the parse function of a handler directive whose
// module, a T, reads the directive's tokens itself.
func parseDirective[T any, PT caddyfileModule[T]](h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m T
	err := PT(&m).UnmarshalCaddyfile(h.Dispenser)
	return PT(&m), err
}

// blockOnly consumes the directive name and refuses arguments after it:
// the directive takes a block and nothing else.
func blockOnly(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// once refuses a subdirective, the dispenser's token, that is given
// again: seen holds the names met so far in the block, name this one's.
func once(d *caddyfile.Dispenser, seen map[string]bool, name string) error {
	if seen[name] {
		return d.Errf("%s already specified", d.Val())
	}
	seen[name] = true
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	atomsphere_cors [<matcher>] {
//		path_prefix      /api/rest/v1/ /partner/api/rest/v1/
//		allow_headers    cache-control content-type expires last-modified accept content-language authorization pragma
//		expose_headers   x-request-id
//		max_age          1h
//		preflight_status 204
//		disable_path_guard
//		account account-123456 {
//			origin https://mydomain.com GET POST DELETE
//			origin http://localhost:8080 GET
//		}
//		account account-987654 {
//			origin https://app.example.org:8443
//		}
//	}
//
// Every subdirective is optional; see Handler for the defaults.
// path_prefixes is accepted for path_prefix, the name of the JSON key. An
// origin line without methods allows GET, POST and DELETE.
//
// This reads the syntax only; the values are checked by the same code
// that checks a JSON config, and every problem of the block is reported,
// each with the file and line it comes from.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := blockOnly(d); err != nil {
		return err
	}
	h.Accounts = map[string][]policy.Rule{}
	p := &caddyfileParser{d: d, h: h, positions: map[policy.Place]position{}}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if sub == "path_prefixes" {
			sub = "path_prefix"
		}
		if sub != "account" {
			if err := once(d, seen, sub); err != nil {
				return err
			}
		}
		if err := p.subdirective(sub); err != nil {
			return err
		}
	}
	return p.check()
}

// position is where in a Caddyfile a value was written.
type position struct {
	file string
	line int
}

// caddyfileParser reads one atomsphere_cors block.
type caddyfileParser struct {
	d         *caddyfile.Dispenser
	h         *Handler
	positions map[policy.Place]position // where each value was written
	errs      []policy.Located          // values that are not numbers or durations
}

// at records that the value of pl is at the dispenser's line.
func (p *caddyfileParser) at(pl policy.Place) { p.positions[pl] = position{p.d.File(), p.d.Line()} }

// subdirective reads one subdirective, sub, of the block.
func (p *caddyfileParser) subdirective(sub string) error {
	d, h := p.d, p.h
	switch sub {
	case "path_prefix":
		p.at(policy.Place{Field: "path_prefixes"})
		h.PathPrefixes = d.RemainingArgs()
		if len(h.PathPrefixes) == 0 {
			return d.ArgErr()
		}

	case "allow_headers", "expose_headers":
		p.at(policy.Place{Field: sub})
		names := d.RemainingArgs()
		if len(names) == 0 {
			return d.ArgErr()
		}
		if sub == "allow_headers" {
			h.AllowHeaders = names
		} else {
			h.ExposeHeaders = names
		}

	case "max_age":
		p.at(policy.Place{Field: sub})
		var arg string
		if !d.AllArgs(&arg) {
			return d.ArgErr()
		}
		dur, err := caddy.ParseDuration(arg)
		if err != nil {
			p.errs = append(p.errs, policy.Located{Msg: fmt.Sprintf("max_age %s: %s", q(arg), short(err.Error())), File: d.File(), Line: d.Line()})
			return nil
		}
		ma := caddy.Duration(dur)
		h.MaxAge = &ma

	case "preflight_status":
		p.at(policy.Place{Field: sub})
		var arg string
		if !d.AllArgs(&arg) {
			return d.ArgErr()
		}
		n, err := strconv.Atoi(arg)
		if err != nil {
			p.errs = append(p.errs, policy.Located{Msg: fmt.Sprintf("preflight_status %s is not a number", q(arg)), File: d.File(), Line: d.Line()})
			return nil
		}
		h.PreflightStatus = n

	case "disable_path_guard":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.DisablePathGuard = true

	case "store":
		p.at(policy.Place{Field: "store"})
		st, err := parseStoreBlock(d)
		if err != nil {
			return err
		}
		h.Store = st

	case "account":
		return p.account()

	default:
		return d.Errf("unrecognized subdirective %q", d.Val())
	}
	return nil
}

// account reads an account block: its ID and its origin lines.
func (p *caddyfileParser) account() error {
	d := p.d
	var id string
	if !d.AllArgs(&id) {
		return d.ArgErr()
	}
	if _, ok := p.h.Accounts[id]; ok {
		return d.Errf("account %s already specified", q(id))
	}
	p.at(policy.Place{Field: "accounts", Account: id, Rule: -1})
	rules := []policy.Rule{}
	for nested := d.Nesting(); d.NextBlock(nested); {
		if d.Val() != "origin" {
			return d.Errf("account %s: unrecognized subdirective %q", q(id), d.Val())
		}
		p.at(policy.Place{Field: "accounts", Account: id, Rule: len(rules)})
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		r := policy.Rule{Origin: args[0]}
		if len(args) > 1 {
			r.Methods = args[1:]
		}
		rules = append(rules, r)
	}
	p.h.Accounts[id] = rules
	return nil
}

// check checks the values as Provision will, each problem at the line of
// its subdirective, account or origin.
func (p *caddyfileParser) check() error {
	more := 0
	var r *policy.Report
	if _, err := newIndex(p.h, false, nil); errors.As(err, &r) {
		p.errs = append(p.errs, r.Locate(func(pl policy.Place) (string, int) {
			pl.Part = "" // a rule's line holds its origin and methods
			pos, ok := p.positions[pl]
			if !ok && pl.Rule >= 0 {
				pos = p.positions[policy.Place{Field: pl.Field, Account: pl.Account, Rule: -1}]
			}
			return pos.file, pos.line
		})...)
		more = r.More
	}
	return policy.JoinLocated(p.errs, more)
}
