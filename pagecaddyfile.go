package atomspherecors

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	// With the handlers that answer requests: after basic_auth,
	// forward_auth and request_header in Caddy's directive order, so the
	// page never reads an identity before authentication has set it.
	registerDirective[Page]("atomsphere_cors_page", "respond")
}

// UnmarshalCaddyfile sets up the page from Caddyfile tokens. Syntax:
//
//	atomsphere_cors_page [<matcher>] {
//		store <name> {
//			poll_interval 1s
//			max_import_size 256MiB
//			storage <module> ...
//		}
//		account {http.auth.user.id}
//		max_rules 50
//	}
//
// store (its block optional, as in atomsphere_cors) and account are
// required; max_rules defaults to 50. The values are checked by the code
// that checks a JSON config.
func (p *Page) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := blockOnly(d); err != nil {
		return err
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if err := once(d, seen, sub); err != nil {
			return err
		}
		switch sub {
		case "store":
			st, err := parseStoreBlock(d)
			if err != nil {
				return err
			}
			p.Store = st
		case "account":
			if !d.AllArgs(&p.Account) {
				return d.ArgErr()
			}
			if err := checkAccountTemplate(p.Account); err != nil {
				return d.WrapErr(err)
			}
		case "max_rules":
			var arg string
			if !d.AllArgs(&arg) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(arg)
			if err != nil || n < 1 {
				return d.Errf("max_rules %s is not a positive number", q(arg))
			}
			p.MaxRules = n
		default:
			return d.Errf("unrecognized subdirective %q", sub)
		}
	}
	if err := p.check(); err != nil {
		return d.WrapErr(err)
	}
	return nil
}
