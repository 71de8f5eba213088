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
// Every subdirective is optional; see Handler for the defaults. An origin
// line without methods allows GET, POST and DELETE. Every bad value in the
// block is reported, each with its file and line.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	h.Accounts = map[string][]Rule{}
	var errs []error
	// bad records a value error at the current token and goes on, so one
	// run reports every problem of the block.
	bad := func(err error) { errs = append(errs, d.WrapErr(err)) }
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if sub != "account" {
			if seen[sub] {
				return d.Errf("%s already specified", sub)
			}
			seen[sub] = true
		}
		switch sub {
		case "path_prefix":
			h.PathPrefixes = d.RemainingArgs()
			if len(h.PathPrefixes) == 0 {
				return d.ArgErr()
			}
			for _, p := range h.PathPrefixes {
				if err := checkPathPrefix(p); err != nil {
					bad(err)
				}
			}

		case "allow_headers", "expose_headers":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.ArgErr()
			}
			if sub == "allow_headers" {
				h.AllowHeaders = names
			} else {
				h.ExposeHeaders = names
			}
			_, herrs := checkHeaderNames(sub, names)
			for _, e := range herrs {
				bad(e)
			}

		case "max_age":
			var arg string
			if !d.AllArgs(&arg) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(arg)
			if err != nil {
				bad(fmt.Errorf("max_age %q: %v", arg, err))
				continue
			}
			if dur < 0 {
				bad(fmt.Errorf("max_age %s is negative", dur))
			}
			ma := caddy.Duration(dur)
			h.MaxAge = &ma

		case "preflight_status":
			var arg string
			if !d.AllArgs(&arg) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(arg)
			if err != nil {
				bad(fmt.Errorf("preflight_status %q is not a number", arg))
				continue
			}
			if err := checkPreflightStatus(n); err != nil {
				bad(err)
			}
			h.PreflightStatus = n

		case "disable_path_guard":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.DisablePathGuard = true

		case "account":
			var id string
			if !d.AllArgs(&id) {
				return d.ArgErr()
			}
			if err := checkAccountID(id); err != nil {
				bad(err)
			}
			if _, ok := h.Accounts[id]; ok {
				return d.Errf("account %q already specified", id)
			}
			rules := []Rule{}
			for nested := d.Nesting(); d.NextBlock(nested); {
				if d.Val() != "origin" {
					return d.Errf("account %q: unrecognized subdirective %q", id, d.Val())
				}
				args := d.RemainingArgs()
				if len(args) == 0 {
					return d.ArgErr()
				}
				r := Rule{Origin: args[0], Methods: args[1:]}
				if len(r.Methods) == 0 {
					r.Methods = nil
				}
				if _, err := parseOrigin(r.Origin); err != nil {
					bad(ruleErr(id, len(rules), r.Origin, err))
				}
				_, merrs := parseMethods(r.Methods)
				for _, e := range merrs {
					bad(ruleErr(id, len(rules), r.Origin, e))
				}
				rules = append(rules, r)
			}
			h.Accounts[id] = rules

		default:
			return d.Errf("unrecognized subdirective %q", sub)
		}
	}
	return errors.Join(errs...)
}
