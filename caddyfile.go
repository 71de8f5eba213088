package atomspherecors

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("atomsphere_cors", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("atomsphere_cors", httpcaddyfile.Before, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var c Handler
	err := c.UnmarshalCaddyfile(h.Dispenser)
	return &c, err
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
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	h.Accounts = map[string][]Rule{}
	p := &caddyfileParser{d: d, h: h, positions: map[place]position{}}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if sub == "path_prefixes" {
			sub = "path_prefix"
		}
		if sub != "account" {
			if seen[sub] {
				return d.Errf("%s already specified", d.Val())
			}
			seen[sub] = true
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
	positions map[place]position // where each value was written
	errs      []located          // values that are not numbers or durations
}

// at records that the value of pl is at the dispenser's line.
func (p *caddyfileParser) at(pl place) { p.positions[pl] = position{p.d.File(), p.d.Line()} }

// subdirective reads one subdirective, sub, of the block.
func (p *caddyfileParser) subdirective(sub string) error {
	d, h := p.d, p.h
	switch sub {
	case "path_prefix":
		p.at(place{field: "path_prefixes"})
		h.PathPrefixes = d.RemainingArgs()
		if len(h.PathPrefixes) == 0 {
			return d.ArgErr()
		}

	case "allow_headers", "expose_headers":
		p.at(place{field: sub})
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
		p.at(place{field: sub})
		var arg string
		if !d.AllArgs(&arg) {
			return d.ArgErr()
		}
		dur, err := caddy.ParseDuration(arg)
		if err != nil {
			p.errs = append(p.errs, located{fmt.Sprintf("max_age %s: %s", q(arg), short(err.Error())), d.File(), d.Line()})
			return nil
		}
		ma := caddy.Duration(dur)
		h.MaxAge = &ma

	case "preflight_status":
		p.at(place{field: sub})
		var arg string
		if !d.AllArgs(&arg) {
			return d.ArgErr()
		}
		n, err := strconv.Atoi(arg)
		if err != nil {
			p.errs = append(p.errs, located{fmt.Sprintf("preflight_status %s is not a number", q(arg)), d.File(), d.Line()})
			return nil
		}
		h.PreflightStatus = n

	case "disable_path_guard":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.DisablePathGuard = true

	case "store":
		p.at(place{field: "store"})
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
	p.at(place{field: "accounts", account: id, rule: -1})
	rules := []Rule{}
	for nested := d.Nesting(); d.NextBlock(nested); {
		if d.Val() != "origin" {
			return d.Errf("account %s: unrecognized subdirective %q", q(id), d.Val())
		}
		p.at(place{field: "accounts", account: id, rule: len(rules)})
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		r := Rule{Origin: args[0]}
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
	var r *report
	if _, err := newIndex(p.h); errors.As(err, &r) {
		p.errs = append(p.errs, r.locate(func(pl place) (string, int) {
			pos, ok := p.positions[pl]
			if !ok && pl.rule >= 0 {
				pos = p.positions[place{field: pl.field, account: pl.account, rule: -1}]
			}
			return pos.file, pos.line
		})...)
		more = r.more
	}
	return joinLocated(p.errs, more)
}
