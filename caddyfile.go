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
	type position struct {
		file string
		line int
	}
	positions := map[place]position{}
	at := func(pl place) { positions[pl] = position{d.File(), d.Line()} }
	var errs []located // values that are not numbers or durations
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
		switch sub {
		case "path_prefix":
			at(place{field: "path_prefixes"})
			h.PathPrefixes = d.RemainingArgs()
			if len(h.PathPrefixes) == 0 {
				return d.ArgErr()
			}

		case "allow_headers", "expose_headers":
			at(place{field: sub})
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
			at(place{field: sub})
			var arg string
			if !d.AllArgs(&arg) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(arg)
			if err != nil {
				errs = append(errs, located{fmt.Sprintf("max_age %s: %s", q(arg), short(err.Error())), d.File(), d.Line()})
				continue
			}
			ma := caddy.Duration(dur)
			h.MaxAge = &ma

		case "preflight_status":
			at(place{field: sub})
			var arg string
			if !d.AllArgs(&arg) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(arg)
			if err != nil {
				errs = append(errs, located{fmt.Sprintf("preflight_status %s is not a number", q(arg)), d.File(), d.Line()})
				continue
			}
			h.PreflightStatus = n

		case "disable_path_guard":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.DisablePathGuard = true

		case "store":
			at(place{field: "store"})
			st, err := parseStoreBlock(d)
			if err != nil {
				return err
			}
			h.Store = st

		case "account":
			var id string
			if !d.AllArgs(&id) {
				return d.ArgErr()
			}
			if _, ok := h.Accounts[id]; ok {
				return d.Errf("account %s already specified", q(id))
			}
			at(place{field: "accounts", account: id, rule: -1})
			rules := []Rule{}
			for nested := d.Nesting(); d.NextBlock(nested); {
				if d.Val() != "origin" {
					return d.Errf("account %s: unrecognized subdirective %q", q(id), d.Val())
				}
				at(place{field: "accounts", account: id, rule: len(rules)})
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
			h.Accounts[id] = rules

		default:
			return d.Errf("unrecognized subdirective %q", d.Val())
		}
	}

	// The values, checked as Provision will check them, each problem at
	// the line of its subdirective, account or origin.
	more := 0
	var r *report
	if _, err := newIndex(h); errors.As(err, &r) {
		errs = append(errs, r.locate(func(pl place) (string, int) {
			p, ok := positions[pl]
			if !ok && pl.rule >= 0 {
				p = positions[place{field: pl.field, account: pl.account, rule: -1}]
			}
			return p.file, p.line
		})...)
		more = r.more
	}
	return joinLocated(errs, more)
}
