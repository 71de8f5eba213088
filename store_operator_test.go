package atomspherecors

// What an operator sees of the rules store through the admin routes,
// the config checks, the import and the metrics (docs/store.md,
// docs/operating.md): each case here is a wrong or silent answer the
// store once gave, checked against real Caddy processes where more than
// one server or a real process's lifetime is involved. Ports: fleet
// servers 7 and 8 (admin 127.0.0.1:2967-2968, HTTP 127.0.0.1:9607-9608),
// in-process admin 127.0.0.1:2975 and 127.0.0.1:2969, HTTP 127.0.0.1:9675-9676.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"atomspherecors/internal/rulestore"
	"atomspherecors/internal/testkit"
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
	// A handler's own storage block is named as such, not as Caddy's.
	if err == nil || !strings.Contains(err.Error(), `storage {"module":"file_system","root":`) {
		t.Errorf("the refusal does not name the storage block as written: %v", err)
	}
	// The same storage with other settings: refused too, or one of them
	// would hold at random (the poll interval of a revocation, say).
	other := strings.Replace(cfg(dirA), `"storage":{"module":"file_system","root":`+fmt.Sprintf("%q", dirA)+`}}}`,
		`"poll_interval":"1h","storage":{"module":"file_system","root":`+fmt.Sprintf("%q", dirA)+`}}}`, 1)
	if other == cfg(dirA) {
		t.Fatal("the config with another poll_interval was not made")
	}
	if err := caddy.Load([]byte(other), true); err == nil || !strings.Contains(err.Error(), `store "main" is named with two different settings`) ||
		!strings.Contains(err.Error(), "poll_interval 1h0m0s") {
		t.Errorf("a load with one store name and two poll intervals: %v", err)
	}
	if err := caddy.Load([]byte(cfg(dirA)), true); err != nil {
		t.Fatalf("a load with one store name and one storage: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	n := rulestore.Registered("main")
	if n != 1 {
		t.Errorf("%d stores named main, want one shared by both handlers", n)
	}
}

const (
	opsAdmin = "http://127.0.0.1:2975"
	opsHTTP  = "http://127.0.0.1:9675"
	// opsMaxImport is the max_import_size of store ops.
	opsMaxImport = 400_000
)

// startOpsCaddy loads, in this process, a Caddy whose handler takes its
// accounts from store "ops" in dir, with extra settings of the store.
func startOpsCaddy(t *testing.T, dir string, store map[string]any) {
	t.Helper()
	store["name"] = "ops"
	cfg := mustJSON(map[string]any{
		"admin":   map[string]any{"listen": "127.0.0.1:2975", "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": dir},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
			"listen": []string{"127.0.0.1:9675"}, "protocols": []string{"h1"},
			"routes": []any{map[string]any{"handle": []any{
				map[string]any{"handler": "atomsphere_cors", "store": store},
				map[string]any{"handler": "static_response", "status_code": 200, "body": "ok"},
			}}},
		}}}},
	})
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
}

func opsSeq(t *testing.T) uint64 {
	t.Helper()
	st := rulestore.Lookup("ops")
	if st == nil {
		t.Fatal("no store ops")
	}
	return st.Status().Seq
}

// An import names each account once in its answer and its writes,
// however many lines name it; every line must give rules; account IDs are
// checked as a PUT's path is; and the body is bounded by max_import_size.
// A refused import writes nothing.
func TestStoreImportChecksEveryLineAndWritesEachAccountOnce(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dir := t.TempDir()
	startOpsCaddy(t, dir, map[string]any{"max_import_size": opsMaxImport})
	c := newProbeClient()
	call := func(method, path, body string) (int, string) {
		t.Helper()
		return storeCall(t, opsAdmin, method, "/atomsphere_cors/ops"+path, body)
	}
	if st, out := call("PUT", "/accounts/acct-w", rulesJSON("https://w.example", "GET")); st != 201 {
		t.Fatalf("PUT: %d %s", st, out)
	}

	t.Run("an account named on 3000 lines", func(t *testing.T) {
		var b strings.Builder
		for i := range 3000 {
			fmt.Fprintf(&b, `{"account":"same","rules":[{"origin":"https://v%d.example","methods":["GET"]}]}`+"\n", i)
			if i%1000 == 500 {
				fmt.Fprintf(&b, `{"account":"other-%d","rules":[]}`+"\n", i/1000)
			}
		}
		seq := opsSeq(t)
		st, out := call("POST", "/import", b.String())
		if st != 200 || out != `{"created":4,"imported":4,"replaced":0}`+"\n" {
			t.Errorf("import: %d %s, want 4 accounts created", st, out)
		}
		if got := opsSeq(t); got != seq+1 {
			t.Errorf("the import advanced seq by %d, want 1 (4 accounts, one commit)", got-seq)
		}
		if r := send(c, preflightProbe(opsHTTP, "same", "https://v2999.example", "GET", "GET")); r.err != nil {
			t.Errorf("the last line of the account: %v", r.err)
		}
		if r := send(c, preflightProbe(opsHTTP, "same", "https://v2998.example", "GET", "")); r.err != nil {
			t.Errorf("an earlier line of the account: %v", r.err)
		}
	})

	for _, tc := range []struct{ name, line, want string }{
		{"rules missing", `{"account":"acct-w"}`, `line 2: account \"acct-w\": \"rules\" missing or null`},
		{"rules null", `{"account":"acct-w","rules":null}`, `line 2: account \"acct-w\": \"rules\" missing or null`},
		{"account missing", `{"rules":[]}`, `line 2: \"account\" missing or null`},
		{"invalid UTF-8", "{\"account\":\"a\xffb\",\"rules\":[]}", `account ID is not valid UTF-8`},
		{"lone high surrogate", `{"account":"a\ud800b","rules":[]}`, `lone UTF-16 surrogate \\ud800`},
		{"lone low surrogate", `{"account":"a\udc00","rules":[]}`, `lone UTF-16 surrogate \\udc00`},
		{"reversed pair", `{"account":"\ude00\ud83d","rules":[]}`, `lone UTF-16 surrogate \\ude00`},
		{"too long", `{"account":"` + strings.Repeat("x", 201) + `","rules":[]}`, `too long for a store: 201 bytes`},
		{"a slash", `{"account":"a/b","rules":[]}`, `must not contain /`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq := opsSeq(t)
			body := `{"account":"fine","rules":[]}` + "\n" + tc.line + "\n"
			st, out := call("POST", "/import", body)
			if st != 400 || !strings.Contains(out, "import refused, nothing written") || !strings.Contains(out, tc.want) {
				t.Errorf("import of %q: %d %s, want 400 with %q", tc.line, st, out, tc.want)
			}
			if got := opsSeq(t); got != seq {
				t.Errorf("a refused import wrote %d changes", got-seq)
			}
			if r := send(c, preflightProbe(opsHTTP, "acct-w", "https://w.example", "GET", "GET")); r.err != nil {
				t.Errorf("acct-w after a refused import: %v", r.err)
			}
			if st, _ := call("GET", "/accounts/a%EF%BF%BDb", ""); st != 404 {
				t.Errorf("an account renamed with U+FFFD exists: %d", st)
			}
		})
	}
	t.Run("a byte order mark", func(t *testing.T) {
		st, out := call("POST", "/import", "\xef\xbb\xbf"+`{"account":"fine","rules":[]}`+"\n")
		if st != 400 || !strings.Contains(out, "line 1: starts with a UTF-8 byte order mark") {
			t.Errorf("import with a byte order mark: %d %s, want 400 naming it", st, out)
		}
	})
	t.Run("a surrogate pair", func(t *testing.T) {
		if st, out := call("POST", "/import", `{"account":"a\ud83d\ude00b","rules":[]}`+"\n"); st != 200 {
			t.Errorf("import: %d %s", st, out)
		}
		if st, _ := call("GET", "/accounts/a%F0%9F%98%80b", ""); st != 200 {
			t.Errorf("the account of an escaped surrogate pair: %d", st)
		}
	})
	t.Run("over max_import_size", func(t *testing.T) {
		seq := opsSeq(t)
		var b strings.Builder
		for i := 0; b.Len() <= opsMaxImport; i++ {
			fmt.Fprintf(&b, `{"account":"big-%d","rules":[]}`+"\n", i)
		}
		st, out := call("POST", "/import", b.String())
		if st != 413 || !strings.Contains(out, fmt.Sprintf("over %d bytes", opsMaxImport)) {
			t.Errorf("import of %d bytes: %d %s, want 413", b.Len(), st, out)
		}
		if got := opsSeq(t); got != seq {
			t.Errorf("a refused import wrote %d changes", got-seq)
		}
	})
	// Nothing of an import goes to the system's temporary directory.
	if left, _ := filepath.Glob(filepath.Join(tmp, "*")); len(left) != 0 {
		t.Errorf("files left in TMPDIR: %v", left)
	}
}

// max_import_size in a Caddyfile: bytes or a unit, adapted to bytes;
// anything else refused with its line.
func TestStoreMaxImportSizeCaddyfile(t *testing.T) {
	adapt := func(size string) (string, error) {
		cf := "{\n\tadmin off\n}\n:9699 {\n\tatomsphere_cors {\n\t\tstore s {\n\t\t\tmax_import_size " + size + "\n\t\t}\n\t}\n}\n"
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
		return string(out), err
	}
	for size, want := range map[string]string{"300MB": "300000000", "1GiB": "1073741824", "4096": "4096", "64kib": "65536"} {
		out, err := adapt(size)
		if err != nil || !strings.Contains(out, `"store":{"max_import_size":`+want+`,"name":"s"}`) {
			t.Errorf("max_import_size %s: %v %s", size, err, out)
		}
	}
	for _, size := range []string{"1TB", "MB", "-5", "99999999999999999999"} {
		if _, err := adapt(size); err == nil || !strings.Contains(err.Error(), "max_import_size") || !strings.Contains(err.Error(), "Caddyfile:7") {
			t.Errorf("max_import_size %s: %v", size, err)
		}
	}
}

// A server that has never loaded its store (no snapshot, the storage
// unreachable) serves no account; its list, export and account reads say
// so with 503 instead of answering as an empty store, and explain says
// the store is not loaded. Once the storage answers they answer 200.
func TestStoreNeverLoadedAnswers503(t *testing.T) {
	f := newFleet(t)
	if err := os.WriteFile(f.storage, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := f.start(7, true)
	for _, path := range []string{"/export", "/accounts", "/accounts/acct-1"} {
		st, out := s.call(t, "GET", path, "")
		if st != 503 || !strings.Contains(out, `store \"fleet\" not loaded on this server (serving: none)`) {
			t.Errorf("GET %s on a store never loaded: %d %q, want 503 saying it is not loaded", path, st, out)
		}
	}
	// Its status says for how long it has been stale: since it opened.
	if err := until(10*time.Second, func() error {
		st, err := s.status(t)
		if err != nil || st == nil || !st.Stale || st.StaleSeconds <= 0 {
			return fmt.Errorf("status %+v: %v", st, err)
		}
		return nil
	}); err != nil {
		t.Errorf("a store never loaded: %v", err)
	}
	q := "/atomsphere_cors/explain?method=OPTIONS&request_method=GET&origin=https%3A%2F%2Fa.example&url=" +
		"http%3A%2F%2F127.0.0.1%3A9607%2Fapi%2Frest%2Fv1%2Facct-1%2Fx"
	st, out := storeCall(t, s.admin, "GET", q, "")
	if st != 200 || !strings.Contains(out, `"reason":"store not loaded`) || !strings.Contains(out, `"status":401`) {
		t.Errorf("explain on a store never loaded: %d %s", st, out)
	}
	if err := os.Remove(f.storage); err != nil {
		t.Fatal(err)
	}
	if err := until(45*time.Second, func() error {
		if st, out := s.call(t, "GET", "/export", ""); st != 200 || out != "" {
			return fmt.Errorf("export: %d %q", st, out)
		}
		return nil
	}); err != nil {
		t.Errorf("once the storage answers: %v", err)
	}
	if st, out := s.call(t, "GET", "/accounts", ""); st != 200 || out != `{"accounts":[]}`+"\n" {
		t.Errorf("the list of an empty store: %d %s", st, out)
	}
}

// Every store metric carries the store's name: with two stores in one
// process, one read and one whose storage is unreachable, each shows its
// own accounts, last sync and errors, so a sync-age alert sees the stale
// one. Every metric the module exports is documented in
// docs/operating.md.
func TestStoreMetricsPerStore(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	dir := t.TempDir()
	broken := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(broken, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	handler := func(name, root string) map[string]any {
		return map[string]any{"handler": "atomsphere_cors", "store": map[string]any{"name": name,
			"poll_interval": "50ms", "storage": map[string]any{"module": "file_system", "root": root}}}
	}
	cfg := mustJSON(map[string]any{
		"admin":   map[string]any{"listen": "127.0.0.1:2975", "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{
			"a": map[string]any{"listen": []string{"127.0.0.1:9675"}, "protocols": []string{"h1"},
				"routes": []any{map[string]any{"handle": []any{handler("alpha", dir)}}}},
			"b": map[string]any{"listen": []string{"127.0.0.1:9676"}, "protocols": []string{"h1"},
				"routes": []any{map[string]any{"handle": []any{handler("beta", broken)}}}},
		}}},
	})
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	for _, id := range []string{"a1", "a2"} {
		if st, out := storeCall(t, opsAdmin, "PUT", "/atomsphere_cors/alpha/accounts/"+id, `[]`); st != 201 {
			t.Fatalf("PUT %s: %d %s", id, st, out)
		}
	}
	var metrics string
	err := until(10*time.Second, func() error {
		st, out := storeCall(t, opsAdmin, "GET", "/metrics", "")
		if st != 200 {
			return fmt.Errorf("/metrics: %d", st)
		}
		metrics = out
		for _, want := range []string{
			`caddy_atomsphere_cors_store_accounts{store="alpha"} 2` + "\n",
			`caddy_atomsphere_cors_store_accounts{store="beta"} 0` + "\n",
			`caddy_atomsphere_cors_store_last_sync_timestamp_seconds{store="beta"} 0` + "\n",
			`caddy_atomsphere_cors_store_edit_duration_seconds_count{store="alpha"} 2` + "\n",
			`caddy_atomsphere_cors_store_poll_duration_seconds_count{store="beta"} `,
		} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("no %q", want)
			}
		}
		for _, bad := range []string{
			`caddy_atomsphere_cors_store_last_sync_timestamp_seconds{store="alpha"} 0` + "\n",
			`caddy_atomsphere_cors_store_sync_errors_total{store="beta"} 0` + "\n",
			`caddy_atomsphere_cors_store_sync_errors_total{store="alpha"} 1`,
		} {
			if strings.Contains(out, bad) {
				return fmt.Errorf("%q", bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("store metrics: %v\n%s", err, grepLines(metrics, "caddy_atomsphere_cors_store"))
	}
	doc, err := os.ReadFile("docs/operating.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(metrics, "\n") {
		name, ok := strings.CutPrefix(line, "# TYPE ")
		if !ok || !strings.HasPrefix(name, "caddy_atomsphere_cors_") {
			continue
		}
		name, _, _ = strings.Cut(name, " ")
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("metric %s is not in docs/operating.md", name)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// An import's body is spooled in the module's directory in Caddy's data
// directory, not the system's temporary directory; a server killed
// during an import leaves its spool file (tenants' rules) there, and the
// next start on that data directory removes it.
func TestStoreImportSpoolCleanedAfterAKill(t *testing.T) {
	f := newFleet(t)
	tmp := t.TempDir()
	f.env = []string{"TMPDIR=" + tmp}
	s := f.start(8, true)
	spools := func() []string {
		m, _ := filepath.Glob(filepath.Join(s.home, "data", "caddy", "atomsphere_cors", "import-spool", "*"))
		return m
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		res, err := adminClient.Post(s.admin+"/atomsphere_cors/fleet/import", "application/x-ndjson", pr)
		if err == nil {
			res.Body.Close()
		}
	}()
	for i := range 100 {
		if _, err := fmt.Fprintf(pw, `{"account":"spooled-%d","rules":[{"origin":"https://tenant.example"}]}`+"\n", i); err != nil {
			t.Fatal(err)
		}
	}
	if err := until(10*time.Second, func() error {
		if len(spools()) != 1 {
			return fmt.Errorf("spool files in the data directory: %v", spools())
		}
		return nil
	}); err != nil {
		t.Errorf("an import under way: %v", err)
	}
	s.kill()
	pw.Close()
	if left, _ := filepath.Glob(filepath.Join(tmp, "*")); len(left) != 0 {
		t.Errorf("the import spooled to the system's temporary directory: %v", left)
	}
	if len(spools()) != 1 {
		t.Fatalf("after the kill: spool files %v, want the one of the import cut off", spools())
	}
	s = f.start(8, false)
	if got := spools(); len(got) != 0 {
		t.Errorf("spool files left after a restart: %v", got)
	}
	if st, out := s.call(t, "GET", "/accounts/spooled-1", ""); st != 404 {
		t.Errorf("an account of the import cut off before its end: %d %s", st, out)
	}
}

// A new server starts from the store's base, a cache of the records:
// checked against which records exist, an account added to the base by
// hand (no record holds it) is not served, a record the base lacks is,
// and the status says the base and the records disagree. A record under
// a key that is not the canonical escape of its ID is no account of the
// store, and is reported.
func TestStoreBaseCheckedAgainstTheRecords(t *testing.T) {
	f := newFleet(t)
	s7 := f.start(7, true)
	var imp strings.Builder
	for i := range 150 {
		fmt.Fprintf(&imp, `{"account":"acct-%03d","rules":[{"origin":"https://a%d.example","methods":["GET"]}]}`+"\n", i, i)
	}
	if st, out := s7.call(t, "POST", "/import", imp.String()); st != 200 {
		t.Fatalf("import: %d %s", st, out)
	}
	dir := filepath.Join(f.storage, "atomsphere_cors", "fleet")
	if err := until(20*time.Second, func() error {
		head, _ := os.ReadFile(filepath.Join(dir, "head"))
		base, _ := os.ReadFile(filepath.Join(dir, "base-seq"))
		if len(head) == 0 || string(head) != string(base) {
			return fmt.Errorf("head %s, base-seq %s", head, base)
		}
		return nil
	}); err != nil {
		t.Fatalf("no base of the import: %v", err)
	}
	// Hand edits: an account in the base alone, a record the base lacks,
	// and a record under a non-canonical key.
	b, err := os.ReadFile(filepath.Join(dir, "base"))
	if err != nil {
		t.Fatal(err)
	}
	hdr, rest, _ := strings.Cut(string(b), "\n")
	hdr = strings.Replace(hdr, `"accounts":150`, `"accounts":151`, 1)
	edited := hdr + "\n" + rest + "ghost-acct\thttps://ghost.example GET\n"
	if err := os.WriteFile(filepath.Join(dir, "base"), []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	for key, rec := range map[string]string{
		"extra-acct":     `{"account":"extra-acct","rules":[{"origin":"https://extra.example","methods":["GET"]}]}`,
		"lowerenc%c3%a9": `{"account":"lowerencé","rules":[{"origin":"https://lower.example","methods":["GET"]}]}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, "accounts", key), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	s8 := f.start(8, true) // no snapshot: it reads the base
	c := newProbeClient()
	for _, p := range []probe{
		preflightProbe(s8.base, "ghost-acct", "https://ghost.example", "GET", ""),
		preflightProbe(s8.base, "extra-acct", "https://extra.example", "GET", "GET"),
		preflightProbe(s8.base, "acct-149", "https://a149.example", "GET", "GET"),
	} {
		if err := until(5*time.Second, func() error { return send(c, p).err }); err != nil {
			t.Errorf("the new server: %v", err)
		}
	}
	if st, _ := s8.call(t, "GET", "/accounts/lowerenc%C3%A9", ""); st != 404 {
		t.Errorf("an account read from a non-canonical key: %d", st)
	}
	st, err := s8.status(t)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.BaseMismatch, `1 accounts in the base have no record (not served) ("ghost-acct")`) ||
		!strings.Contains(st.BaseMismatch, `1 records are not in the base (read from the records) ("extra-acct")`) {
		t.Errorf("status base_mismatch %q", st.BaseMismatch)
	}
	if len(st.IgnoredKeys) != 1 || st.IgnoredKeys[0] != "lowerenc%c3%a9" {
		t.Errorf("status ignored_keys %q", st.IgnoredKeys)
	}
	if st.Accounts != 151 {
		t.Errorf("the new server serves %d accounts, want the 151 records", st.Accounts)
	}
}

func TestStoreConfigRefusals(t *testing.T) {
	for _, tc := range []struct{ name, cfg, want string }{
		{"both", `{"store":{"name":"s"},"accounts":{"a":[{"origin":"https://a.example"}]}}`, "not both"},
		{"bad name", `{"store":{"name":"a/b"}}`, "may only have"},
		{"empty name", `{"store":{"name":""}}`, "must be 1-64"},
		{"poll", `{"store":{"name":"s","poll_interval":"1ms"}}`, "below 10ms"},
	} {
		var h Handler
		if err := json.Unmarshal([]byte(tc.cfg), &h); err != nil {
			t.Fatal(err)
		}
		if _, err := newIndex(&h, false, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	cf := "{\n\tadmin off\n}\n:9699 {\n\tatomsphere_cors {\n\t\tstore s {\n\t\t\tpoll_interval 2s\n\t\t\tstorage file_system /tmp/x\n\t\t}\n\t}\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte(`"store":{"name":"s","poll_interval":2000000000,"storage":{"module":"file_system","root":"/tmp/x"}}`)) {
		t.Errorf("adapted: %s", out)
	}
	cf = strings.Replace(cf, "\t\tstore s", "\t\taccount a {\n\t\t\torigin https://a.example\n\t\t}\n\t\tstore s", 1)
	if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"}); err == nil ||
		!strings.Contains(err.Error(), "not both") || !strings.Contains(err.Error(), "Caddyfile:9") {
		t.Errorf("inline accounts and a store: %v", err)
	}
}

const (
	storeAdmin = "http://127.0.0.1:2969"
	storeHTTP  = "http://127.0.0.1:9699"
)

// storeCall sends one request to a store's admin route (no
// Content-Type) and returns the status and the body.
func storeCall(t testing.TB, admin, method, path, body string) (int, string) {
	t.Helper()
	return testkit.Admin(t, admin, method, path, "", body)
}

func TestStoreAdminRoutesInProcess(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	dir := t.TempDir()
	cfg := fmt.Sprintf(`{"admin":{"listen":"127.0.0.1:2969","config":{"persist":false}},
	"storage":{"module":"file_system","root":%q},
	"logging":{"logs":{"default":{"level":"WARN"}}},
	"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:9699"],"protocols":["h1"],"routes":[{"handle":[
		{"handler":"atomsphere_cors","store":{"name":"main"}},
		{"handler":"static_response","status_code":200,"body":"ok"}]}]}}}}}`, dir)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	c := newProbeClient()
	check := func(what string, p probe) {
		t.Helper()
		if r := send(c, p); r.err != nil {
			t.Errorf("%s: %v", what, r.err)
		}
	}
	check("empty store", preflightProbe(storeHTTP, "a1", "https://a.example", "GET", ""))

	st, out := storeCall(t, storeAdmin, "PUT", "/atomsphere_cors/main/accounts/a1", `[{"origin":"HTTPS://A.example:443","methods":["get","put"]}]`)
	if st != http.StatusCreated || out != `[{"origin":"https://a.example","methods":["GET","PUT"]}]`+"\n" {
		t.Fatalf("PUT: %d %s", st, out)
	}
	check("after PUT", preflightProbe(storeHTTP, "a1", "https://a.example", "PUT", "GET, PUT"))
	check("after PUT", normalProbe(storeHTTP, "a1", "https://a.example", true, "ok"))
	if st, _ := storeCall(t, storeAdmin, "PUT", "/atomsphere_cors/main/accounts/a1", `[{"origin":"https://a.example"}]`); st != http.StatusOK {
		t.Errorf("PUT again: %d", st)
	}
	check("after replace", preflightProbe(storeHTTP, "a1", "https://a.example", "PUT", ""))

	st, out = storeCall(t, storeAdmin, "PUT", "/atomsphere_cors/main/accounts/a1", `[{"origin":"https://a.example"},{"origin":"ftp://b.example","methods":["GTE"]}]`)
	if st != http.StatusBadRequest || !strings.Contains(out, `account \"a1\", rule 2 (origin \"ftp://b.example\")`) {
		t.Errorf("bad PUT: %d %s", st, out)
	}
	check("after a refused PUT", preflightProbe(storeHTTP, "a1", "https://a.example", "DELETE", "GET, POST, DELETE"))
	// Writes the store cannot keep as every server would read them are
	// refused, and change nothing (docs/store.md, "Admin routes").
	for _, bad := range []struct{ path, body, want string }{
		{"/accounts/" + strings.Repeat("x", 201), `[]`, "account ID too long for a store: 201 bytes"},
		{"/accounts/" + strings.Repeat("%C3%A9", 34), `[]`, "too long for a store: 204 bytes"},
		{"/accounts/a%ffb", `[]`, "not valid UTF-8"},
		{"/accounts/a1", `null`, "null (an account without rules is [])"},
	} {
		st, out := storeCall(t, storeAdmin, "PUT", "/atomsphere_cors/main"+bad.path, bad.body)
		if st != http.StatusBadRequest || !strings.Contains(out, bad.want) {
			t.Errorf("PUT %.40s %s: %d %s, want 400 with %q", bad.path, bad.body, st, out, bad.want)
		}
	}
	if st, _ := storeCall(t, storeAdmin, "PUT", "/atomsphere_cors/main/accounts/"+strings.Repeat("x", 200), `[]`); st != http.StatusCreated {
		t.Errorf("PUT of a 200-byte ID: %d", st)
	}
	seqBefore := rulestore.Lookup("main").Status().Seq
	if st, _ := storeCall(t, storeAdmin, "DELETE", "/atomsphere_cors/main/accounts/never-there", ""); st != http.StatusNotFound {
		t.Errorf("DELETE of a missing account: %d", st)
	}
	if got := rulestore.Lookup("main").Status().Seq; got != seqBefore {
		t.Errorf("a DELETE answered 404 wrote a change (seq %d -> %d)", seqBefore, got)
	}
	if st, _ := storeCall(t, storeAdmin, "DELETE", "/atomsphere_cors/main/accounts/"+strings.Repeat("x", 200), ""); st != http.StatusNoContent {
		t.Errorf("DELETE of the 200-byte ID: %d", st)
	}

	if st, out := storeCall(t, storeAdmin, "GET", "/atomsphere_cors/main/accounts/a1", ""); st != 200 || !strings.Contains(out, `"methods":["GET","POST","DELETE"]`) {
		t.Errorf("GET: %d %s", st, out)
	}
	if st, _ := storeCall(t, storeAdmin, "GET", "/atomsphere_cors/main/accounts/nope", ""); st != 404 {
		t.Errorf("GET unknown: %d", st)
	}
	if st, _ := storeCall(t, storeAdmin, "DELETE", "/atomsphere_cors/main/accounts/nope", ""); st != 404 {
		t.Errorf("DELETE unknown: %d", st)
	}

	var imp strings.Builder
	for i := range 250 {
		fmt.Fprintf(&imp, `{"account":"imp-%03d","rules":[{"origin":"https://imp-%d.example","methods":["GET"]}]}`+"\n", i, i)
	}
	bad := imp.String() + `{"account":"x","rules":[{"origin":"https://x.example/"}]}` + "\nnot json\n"
	st, out = storeCall(t, storeAdmin, "POST", "/atomsphere_cors/main/import", bad)
	if st != 400 || !strings.Contains(out, "line 251: account \\\"x\\\", rule 1") || !strings.Contains(out, "line 252: not a JSON record") {
		t.Errorf("bad import: %d %s", st, out)
	}
	check("after a refused import", preflightProbe(storeHTTP, "imp-001", "https://imp-1.example", "GET", ""))
	// The first poll writes a base of the accounts so far; the next
	// would wait a minute, unless an import asks for one.
	if err := testkit.Until(10*time.Second, 20*time.Millisecond, func() error {
		_, err := os.Stat(filepath.Join(dir, "atomsphere_cors", "main", "base-seq"))
		return err
	}); err != nil {
		t.Fatalf("no base after the first poll: %v", err)
	}
	st, out = storeCall(t, storeAdmin, "POST", "/atomsphere_cors/main/import", imp.String())
	if st != 200 || !strings.Contains(out, `"imported":250`) {
		t.Fatalf("import: %d %s", st, out)
	}
	check("after import", preflightProbe(storeHTTP, "imp-249", "https://imp-249.example", "GET", "GET"))
	// The import left a base with its accounts for new servers to start
	// from (docs/store.md, "How the store works").
	if err := testkit.Until(10*time.Second, 20*time.Millisecond, func() error {
		var head, base rulestore.Head
		for key, into := range map[string]*rulestore.Head{"head": &head, "base-seq": &base} {
			b, err := os.ReadFile(filepath.Join(dir, "atomsphere_cors", "main", key))
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, into); err != nil {
				return err
			}
		}
		if base != head {
			return fmt.Errorf("base at %+v, the store at %+v", base, head)
		}
		return nil
	}); err != nil {
		t.Errorf("no base of the import: %v", err)
	}

	// An import whose body takes longer than Caddy's 10 s for a request
	// body, but keeps coming, is read to its end.
	pr, pw := io.Pipe()
	go func() {
		for i := range 12 {
			fmt.Fprintf(pw, `{"account":"slow-%02d","rules":[{"origin":"https://slow.example"}]}`+"\n", i)
			time.Sleep(time.Second)
		}
		pw.Close()
	}()
	res, err := adminClient.Post(storeAdmin+"/atomsphere_cors/main/import", "application/x-ndjson", pr)
	if err != nil {
		t.Fatal(err)
	}
	slow, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(slow), `"imported":12`) {
		t.Errorf("an import sent over 12 s: %d %s", res.StatusCode, slow)
	}
	for i := range 12 {
		if st, _ := storeCall(t, storeAdmin, "DELETE", fmt.Sprintf("/atomsphere_cors/main/accounts/slow-%02d", i), ""); st != http.StatusNoContent {
			t.Errorf("DELETE slow-%02d: %d", i, st)
		}
	}

	st, out = storeCall(t, storeAdmin, "GET", "/atomsphere_cors/main/accounts?after=imp-247&limit=2", "")
	if st != 200 || out != `{"accounts":["imp-248","imp-249"]}`+"\n" {
		t.Errorf("list: %d %s", st, out)
	}
	st, out = storeCall(t, storeAdmin, "GET", "/atomsphere_cors/main/accounts?limit=2", "")
	if st != 200 || out != `{"accounts":["a1","imp-000"],"next":"imp-000"}`+"\n" {
		t.Errorf("list: %d %s", st, out)
	}
	st, out = storeCall(t, storeAdmin, "GET", "/atomsphere_cors/main/export", "")
	if st != 200 || strings.Count(out, "\n") != 251 || !strings.HasPrefix(out, `{"account":"a1","rules":[{"origin":"https://a.example","methods":["GET","POST","DELETE"]}]}`) {
		t.Errorf("export: %d %d lines", st, strings.Count(out, "\n"))
	}
	if st, _ := storeCall(t, storeAdmin, "DELETE", "/atomsphere_cors/main/accounts/a1", ""); st != http.StatusNoContent {
		t.Errorf("DELETE: %d", st)
	}
	check("after DELETE", preflightProbe(storeHTTP, "a1", "https://a.example", "GET", ""))

	// A reload that keeps the store settings reuses the loaded store.
	before := rulestore.Lookup("main")
	if err := caddy.Load([]byte(strings.Replace(cfg, `"body":"ok"`, `"body":"ok2"`, 1)), true); err != nil {
		t.Fatal(err)
	}
	if rulestore.Lookup("main") != before {
		t.Error("a reload with the same store settings opened the store again")
	}
	check("after reload", preflightProbe(storeHTTP, "imp-249", "https://imp-249.example", "GET", "GET"))
	st, out = storeCall(t, storeAdmin, "GET", "/atomsphere_cors/main", "")
	if st != 200 || !strings.Contains(out, `"serving":"store"`) || !strings.Contains(out, `"accounts":250`) {
		t.Errorf("status: %d %s", st, out)
	}
}
