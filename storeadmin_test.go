package atomspherecors

// The rules store in one process: the copy-on-write view, two stores
// sharing one file_system storage as two servers would, the Caddyfile
// and JSON settings, and the admin routes against Caddy loaded in this
// process (docs/store.md). Ports: admin 127.0.0.1:2969, HTTP
// 127.0.0.1:9699.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"atomspherecors/internal/rulestore"
	"atomspherecors/internal/testkit"
)

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
		if _, err := newIndex(&h); err == nil || !strings.Contains(err.Error(), tc.want) {
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

func storeCall(t testing.TB, admin, method, path, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, admin+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	res, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
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
