package atomspherecors

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// parseStoreBlock reads the store subdirective of atomsphere_cors:
//
//	store <name> {
//		poll_interval 1s
//		storage <module> ...
//	}
//
// The block is optional; storage takes a storage module as Caddy's
// global storage option does.
func parseStoreBlock(d *caddyfile.Dispenser) (*StoreConfig, error) {
	var name string
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name = d.Val()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	sc := &StoreConfig{Name: name}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return nil, d.Errf("store %s: %s already specified", q(name), sub)
		}
		seen[sub] = true
		switch sub {
		case "poll_interval":
			var arg string
			if !d.AllArgs(&arg) {
				return nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(arg)
			if err != nil {
				return nil, d.Errf("store %s: poll_interval %s: %s", q(name), q(arg), short(err.Error()))
			}
			sc.PollInterval = caddy.Duration(dur)
		case "storage":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			modName := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "caddy.storage."+modName)
			if err != nil {
				return nil, err
			}
			if _, ok := unm.(caddy.StorageConverter); !ok {
				return nil, d.Errf("store %s: module caddy.storage.%s is not a storage", q(name), modName)
			}
			sc.StorageRaw = caddyconfig.JSONModuleObject(unm, "module", modName, nil)
		default:
			return nil, d.Errf("store %s: unrecognized subdirective %q", q(name), sub)
		}
	}
	return sc, nil
}
