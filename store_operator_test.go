package atomspherecors

// What an operator sees of the rules store through the admin routes,
// the config checks, the import and the metrics (docs/store.md,
// docs/operating.md): each case here is a wrong or silent answer the
// store once gave, checked against real Caddy processes where more than
// one server or a real process's lifetime is involved. Ports: fleet
// servers 7 and 8 (admin 127.0.0.1:2967-2968, HTTP 127.0.0.1:9607-9608),
// in-process admin 127.0.0.1:2975 and HTTP 127.0.0.1:9675-9676.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// One store name in one config is one store: two handlers that give the
// same name two storages are refused, naming the store and both places,
// by caddy validate as by a load; the same name with the same storage,
// spelt as Caddy's storage in one handler and as a storage block in the
// other, is one shared store.
func TestStoreOneNameOneStorage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy")
	}
	bin := caddyBinary(t)
	home := t.TempDir()
	dirA, dirB := filepath.Join(home, "a"), filepath.Join(home, "b")
	caddyfile := func(second string) string {
		return fmt.Sprintf(`{
	admin off
	storage file_system %s
}
http://127.0.0.1:9607 {
	atomsphere_cors {
		store main
	}
	respond ok
}
http://127.0.0.1:9608 {
	atomsphere_cors {
		store main {
			storage file_system %s
		}
	}
	respond ok
}
`, dirA, second)
	}
	validate := func(cf string) (string, error) {
		path := filepath.Join(home, "Caddyfile")
		if err := os.WriteFile(path, []byte(cf), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "validate", "--adapter", "caddyfile", "--config", path)
		cmd.Env = append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+filepath.Join(home, "data"), "XDG_CONFIG_HOME="+filepath.Join(home, "config"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := validate(caddyfile(dirB))
	if err == nil {
		t.Errorf("caddy validate accepted one store name with two storages:\n%s", out)
	}
	for _, want := range []string{`store \"main\" is named with two different storages`, dirA, dirB, `server \"srv0\"`, `server \"srv1\"`} {
		if !strings.Contains(out, want) {
			t.Errorf("caddy validate's error lacks %q:\n%s", want, out)
		}
	}
	if out, err := validate(caddyfile(dirA)); err != nil {
		t.Errorf("caddy validate refused one store name with the same storage spelt two ways: %v\n%s", err, out)
	}

	// In this process: the same refusal on a load, and one shared store
	// when the storage is the same.
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	cfg := func(second string) string {
		return fmt.Sprintf(`{"admin":{"disabled":true},"storage":{"module":"file_system","root":%q},
	"logging":{"logs":{"default":{"level":"WARN"}}},
	"apps":{"http":{"servers":{
	"one":{"listen":["127.0.0.1:9675"],"protocols":["h1"],"routes":[{"handle":[{"handler":"atomsphere_cors","store":{"name":"main"}}]}]},
	"two":{"listen":["127.0.0.1:9676"],"protocols":["h1"],"routes":[{"handle":[{"handler":"atomsphere_cors","store":{"name":"main","storage":{"module":"file_system","root":%q}}}]}]}}}}}`, dirA, second)
	}
	err = caddy.Load([]byte(cfg(dirB)), true)
	if err == nil || !strings.Contains(err.Error(), `store "main" is named with two different storages`) {
		t.Errorf("a load with one store name and two storages: %v", err)
	}
	if err := caddy.Load([]byte(cfg(dirA)), true); err != nil {
		t.Fatalf("a load with one store name and one storage: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	registry.Lock()
	n := len(registry.byName["main"])
	registry.Unlock()
	if n != 1 {
		t.Errorf("%d stores named main, want one shared by both handlers", n)
	}
}
