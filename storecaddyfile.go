package atomspherecors

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// parseStoreBlock reads the store subdirective of atomsphere_cors:
//
//	store <name> {
//		poll_interval 1s
//		max_import_size 256MiB
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
		case "max_import_size":
			var arg string
			if !d.AllArgs(&arg) {
				return nil, d.ArgErr()
			}
			n, err := parseByteSize(arg)
			if err != nil {
				return nil, d.Errf("store %s: max_import_size %s: %v", q(name), q(arg), err)
			}
			sc.MaxImportSize = n
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

// parseByteSize reads a size: a whole number of bytes, or one followed by
// B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), in
// any case.
func parseByteSize(s string) (int64, error) {
	i := 0
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, errors.New("not a whole number of bytes, such as 268435456, 300MB or 256MiB")
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, err
	}
	units := map[string]int64{"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
	u, ok := units[strings.ToLower(s[i:])]
	if !ok {
		return 0, fmt.Errorf("unit %s is not B, KB, MB, GB, KiB, MiB or GiB", q(s[i:]))
	}
	if n > math.MaxInt64/u {
		return 0, errors.New("too large")
	}
	return n * u, nil
}
