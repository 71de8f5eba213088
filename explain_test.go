package atomspherecors

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/rulestore"
)

// runExplain runs the binary's explain subcommand and returns its
// stdout, stderr and exit status.
func runExplainBinary(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"atomsphere-cors", "explain"}, args...)...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir(), "XDG_DATA_HOME="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running %v: %v", cmd.Args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// explainJSON runs explain --json and decodes its answer.
func explainJSON(t *testing.T, bin string, args ...string) Explanation {
	t.Helper()
	out, errOut, code := runExplainBinary(t, bin, append([]string{"--json"}, args...)...)
	if code != 0 {
		t.Fatalf("explain %v: exit status %d\n%s%s", args, code, out, errOut)
	}
	var e Explanation
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatalf("explain %v: %v\n%s", args, err, out)
	}
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("explain --json: want one line, got %q", out)
	}
	return e
}

const obsExplainCaddyfile = `{
	admin off
	persist_config off
	default_bind 127.0.0.1
	http_port 9798
}

http://127.0.0.1:9710 {
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
			origin http://localhost:8080 GET
		}
		account account-idn {
			origin https://bücher.example GET
		}
	}
	respond "api" 200
}

http://127.0.0.1:9712 {
	respond "no cors here" 200
}
`

// explainCase is one explain run with its known answer.
type explainCase struct {
	name    string
	args    []string // flags before METHOD URL
	method  string
	url     string
	account string
	pre     bool
	outcome string
	reason  string
	status  int
	next    bool
	headers http.Header
	norm    string // origin_normalised, when checked
	reading string // the path guard's reading that fired
}

func (c explainCase) check(t *testing.T, e Explanation) {
	t.Helper()
	if e.Account != c.account || e.Preflight != c.pre || e.Outcome != c.outcome || e.Reason != c.reason ||
		e.Status != c.status || e.NextHandler != c.next {
		t.Errorf("%s: got account %q preflight %v outcome %q reason %q status %d next %v,\n"+
			"want account %q preflight %v outcome %q reason %q status %d next %v",
			c.name, e.Account, e.Preflight, e.Outcome, e.Reason, e.Status, e.NextHandler,
			c.account, c.pre, c.outcome, c.reason, c.status, c.next)
	}
	if fmt.Sprint(e.Headers) != fmt.Sprint(c.headers) {
		t.Errorf("%s: headers %v, want %v", c.name, e.Headers, c.headers)
	}
	if e.Reading != c.reading {
		t.Errorf("%s: reading %q, want %q", c.name, e.Reading, c.reading)
	}
	if c.norm != "" && e.OriginNormalised != c.norm {
		t.Errorf("%s: origin normalised %q, want %q", c.name, e.OriginNormalised, c.norm)
	}
}

// explainCases are requests with known answers against
// obsExplainCaddyfile (base is its site), including the tricky readings
// of behaviour §1 and §6.
func explainCases(base string) []explainCase {
	my := []string{"--origin", "https://mydomain.com"}
	preOK := func(origin, methods string) http.Header {
		return http.Header{
			"Access-Control-Allow-Origin":      {origin},
			"Access-Control-Allow-Credentials": {"true"},
			"Access-Control-Allow-Methods":     {methods},
			"Access-Control-Allow-Headers":     {"cache-control,content-type,expires,last-modified,accept,content-language,authorization,pragma"},
			"Access-Control-Max-Age":           {"3600"},
			"Vary":                             {varyPreflight},
		}
	}
	preDenied := http.Header{"Vary": {varyPreflight}}
	normalOK := func(origin string) http.Header {
		return http.Header{"Access-Control-Allow-Origin": {origin}, "Access-Control-Allow-Credentials": {"true"}, "Vary": {"Origin"}}
	}
	a := base + "/api/rest/v1/account-123456/Atom"
	return []explainCase{
		{name: "allowed preflight", args: append(slices.Clone(my), "--request-method", "DELETE"), method: "OPTIONS", url: a,
			account: "account-123456", pre: true, outcome: "allowed", status: 204,
			headers: preOK("https://mydomain.com", "GET, POST, DELETE"), norm: "https://mydomain.com"},
		{name: "denied preflight", args: append(slices.Clone(my), "--request-method", "PUT"), method: "OPTIONS", url: a,
			account: "account-123456", pre: true, outcome: "denied", reason: "method not allowed", status: 401, headers: preDenied},
		{name: "upper-case prefix", args: append(slices.Clone(my), "--request-method", "GET"), method: "OPTIONS",
			url: base + "/API/Rest/V1/account-123456/Atom", account: "account-123456", pre: true, outcome: "allowed", status: 204,
			headers: preOK("https://mydomain.com", "GET, POST, DELETE")},
		{name: "dot segments", args: my, method: "GET", url: base + "/api/rest/v1/account-123456/x/../Atom",
			account: "account-123456", outcome: "allowed", status: 200, next: true, headers: normalOK("https://mydomain.com")},
		{name: "dot segments across accounts", args: my, method: "GET", url: base + "/api/rest/v1/account-987654/../account-123456/Atom",
			account: "account-123456", outcome: "denied", reason: "ambiguous path", status: 400, headers: http.Header{"Vary": {"Origin"}},
			reading: "split before decoding (Express, chi and other raw-path routers)"},
		{name: "default port", args: []string{"--origin", "https://mydomain.com:443", "--request-method", "POST"}, method: "OPTIONS",
			url: a, account: "account-123456", pre: true, outcome: "allowed", status: 204,
			headers: preOK("https://mydomain.com:443", "GET, POST, DELETE"), norm: "https://mydomain.com"},
		{name: "IDN origin, punycode", args: []string{"--origin", "https://xn--bcher-kva.example", "--request-method", "GET"},
			method: "OPTIONS", url: base + "/api/rest/v1/account-idn/x", account: "account-idn", pre: true, outcome: "allowed",
			status: 204, headers: preOK("https://xn--bcher-kva.example", "GET"), norm: "https://xn--bcher-kva.example"},
		{name: "IDN origin, Unicode", args: []string{"--origin", "https://bücher.example"}, method: "GET",
			url: base + "/api/rest/v1/account-idn/x", account: "account-idn", outcome: "allowed", status: 200, next: true,
			headers: normalOK("https://bücher.example"), norm: "https://xn--bcher-kva.example"},
		{name: "repeated Origin", args: append(append(slices.Clone(my), my...), "--request-method", "GET"), method: "OPTIONS",
			url: a, account: "account-123456", pre: true, outcome: "denied", reason: "repeated Origin header", status: 401,
			headers: preDenied},
		{name: "origin not allowed, normal request", args: []string{"--origin", "https://evil.example"}, method: "GET", url: a,
			account: "account-123456", outcome: "denied", reason: "origin not allowed", status: 200, next: true,
			headers: http.Header{"Vary": {"Origin"}}},
		{name: "ambiguous path", args: append(slices.Clone(my), "--request-method", "GET"), method: "OPTIONS",
			url: base + "/api/rest/v1/account-123456/..;/account-987654/x", account: "account-123456", pre: true,
			outcome: "denied", reason: "ambiguous path", status: 400, headers: http.Header{"Vary": {"Origin"}},
			reading: "path parameters stripped, then decoded (Tomcat and other servlet containers)"},
		{name: "not an account path", args: my, method: "GET", url: base + "/api/rest/v1/", outcome: "untouched",
			reason: "not an account path", status: 200, next: true, headers: http.Header{}},
		{name: "no handler on the site", args: my, method: "GET", url: "http://127.0.0.1:9712/api/rest/v1/account-123456/x",
			outcome: "untouched", reason: "no atomsphere_cors handler is reached by this URL", headers: http.Header{}},
	}
}

// TestExplainCommand runs the explain subcommand of a Caddy built with
// this module: against a Caddyfile, and against a running server's admin
// API, whose answers follow an admin API edit.
func TestExplainCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Caddy")
	}
	storage := obsIsolate(t)
	dir := t.TempDir()
	bin := caddyBinary(t)
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(obsExplainCaddyfile), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("config", func(t *testing.T) {
		for _, c := range explainCases("http://127.0.0.1:9710") {
			args := append(append([]string{"--config", cfg}, c.args...), c.method, c.url)
			c.check(t, explainJSON(t, bin, args...))
		}
		// The handler's place in the config, as the admin API names it.
		e := explainJSON(t, bin, "--config", cfg, "--origin", "https://mydomain.com", "GET",
			"http://127.0.0.1:9710/api/rest/v1/account-123456/x")
		if !strings.HasPrefix(e.Handler, "/config/apps/http/servers/") || len(e.Rules) != 2 ||
			e.Rules[0] != (ExplainRule{"https://mydomain.com", "GET, POST, DELETE"}) {
			t.Errorf("handler %q, rules %v", e.Handler, e.Rules)
		}
	})

	t.Run("text", func(t *testing.T) {
		out, errOut, code := runExplainBinary(t, bin, "--config", cfg, "--origin", "https://mydomain.com",
			"--request-method", "PUT", "OPTIONS", "http://127.0.0.1:9710/api/rest/v1/account-123456/Atom")
		if code != 0 {
			t.Fatalf("exit status %d\n%s%s", code, out, errOut)
		}
		for _, want := range []string{
			"account:   account-123456 (prefix /api/rest/v1/)\n",
			"rules:     https://mydomain.com GET, POST, DELETE\n           http://localhost:8080 GET\n",
			"origin:    https://mydomain.com, normalised https://mydomain.com\n",
			"preflight: yes (Access-Control-Request-Method: PUT)\n",
			"decision:  denied: method not allowed\n",
			"status:    401\n",
			"headers:\n  Vary: " + varyPreflight + "\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("no answer", func(t *testing.T) {
		bad := filepath.Join(dir, "bad.caddyfile")
		if err := os.WriteFile(bad, []byte("http://127.0.0.1:9713 {\n\tatomsphere_cors {\n\t\taccount a {\n\t\t\torigin ftp://x.example\n\t\t}\n\t}\n}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"--config", bad, "--origin", "https://x.example", "GET", "http://127.0.0.1:9713/api/rest/v1/a/x"},
			{"--config", filepath.Join(dir, "missing"), "--origin", "https://x.example", "GET", "http://127.0.0.1:9713/"},
			{"--address", obsAdminNone, "--origin", "https://x.example", "GET", "http://127.0.0.1:9713/"},
			{"--config", cfg, "--origin", "https://x.example", "GET", "ftp://127.0.0.1:9710/"},
			{"--config", cfg, "GET", "http://127.0.0.1:9710/"},
		} {
			out, errOut, code := runExplainBinary(t, bin, args...)
			if code == 0 {
				t.Errorf("explain %v: exit status 0, want non-zero\n%s%s", args, out, errOut)
			}
		}
	})

	t.Run("address", func(t *testing.T) {
		startCaddy(t, "caddyfile", strings.Replace(strings.Replace(obsExplainCaddyfile,
			"admin off", "admin "+obsAdminLive+"\n\t"+storage, 1), "9710", "9711", -1))
		for _, c := range explainCases("http://127.0.0.1:9711") {
			args := append(append([]string{"--address", obsAdminLive}, c.args...), c.method, c.url)
			c.check(t, explainJSON(t, bin, args...))
		}
		// The live rules: remove the account's first rule through the
		// admin API, and the same preflight is denied.
		e := explainJSON(t, bin, "--address", obsAdminLive, "--origin", "https://mydomain.com", "--request-method", "GET",
			"OPTIONS", "http://127.0.0.1:9711/api/rest/v1/account-123456/x")
		if e.Outcome != "allowed" {
			t.Fatalf("before the edit: %+v", e)
		}
		req, err := http.NewRequest("DELETE", "http://"+obsAdminLive+e.Handler+"/accounts/account-123456/0", nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("DELETE %s: status %d", req.URL, res.StatusCode)
		}
		e = explainJSON(t, bin, "--address", obsAdminLive, "--origin", "https://mydomain.com", "--request-method", "GET",
			"OPTIONS", "http://127.0.0.1:9711/api/rest/v1/account-123456/x")
		if e.Outcome != "denied" || e.Reason != "origin not allowed" || len(e.Rules) != 1 {
			t.Errorf("after the edit: %+v", e)
		}
	})
}

// TestExplainWithStore: the explain command answers for a handler whose
// accounts are in a rules store on disk: it reads the store once and
// writes nothing there; an empty store has no accounts; a storage that
// cannot be read is an error, and a non-zero exit.
func TestExplainWithStore(t *testing.T) {
	dir := t.TempDir()
	// Store "t" on disk, with one account, written as a server writes it.
	s := rulestore.Open("t", "t\nexplain", t.TempDir(), &certmagic.FileStorage{Path: dir}, zap.NewNop(), time.Hour)
	t.Cleanup(func() { _ = s.Destruct() })
	rules := []policy.Rule{{Origin: "https://app.example", Methods: []string{"GET"}}}
	acct, err := s.Compile("acct-1", rules)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(context.Background(), []rulestore.Change{{ID: "acct-1", Rules: rules, Acct: acct}}); err != nil {
		t.Fatal(err)
	}

	writeConfig := func(root string) string {
		cfg := fmt.Sprintf(`{"apps": {"http": {"servers": {"s": {"listen": [":9099"], "routes": [{"handle": [
			{"handler": "atomsphere_cors", "store": {"name": "t", "storage": {"module": "file_system", "root": %q}}}]}]}}}}}`, root)
		name := filepath.Join(t.TempDir(), "caddy.json")
		if err := os.WriteFile(name, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return name
	}
	files := func() []string {
		var out []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil {
				info, _ := d.Info()
				out = append(out, fmt.Sprintf("%s %d %v", p, info.Size(), info.ModTime()))
			}
			return nil
		})
		return out
	}
	before := files()
	full := writeConfig(dir)
	for _, tc := range []struct {
		url, outcome, reason string
	}{
		{"http://127.0.0.1:9099/api/rest/v1/acct-1/x", "allowed", ""},
		{"http://127.0.0.1:9099/api/rest/v1/acct-2/x", "denied", "account has no rules"},
	} {
		e, err := explainConfig(full, "", explainRequest{method: "GET", url: tc.url, origins: []string{"https://app.example"}})
		if err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		if e.Outcome != tc.outcome || e.Reason != tc.reason {
			t.Errorf("%s: %s %q, want %s %q", tc.url, e.Outcome, e.Reason, tc.outcome, tc.reason)
		}
	}
	if after := files(); !slices.Equal(before, after) {
		t.Errorf("explain changed the store's files:\nbefore %v\nafter  %v", before, after)
	}

	// The store in Caddy's own storage, set at the top of the config.
	global := filepath.Join(t.TempDir(), "global.json")
	if err := os.WriteFile(global, []byte(fmt.Sprintf(`{"storage": {"module": "file_system", "root": %q},
		"apps": {"http": {"servers": {"s": {"listen": [":9099"], "routes": [{"handle": [
			{"handler": "atomsphere_cors", "store": {"name": "t"}}]}]}}}}}`, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	if e, err := explainConfig(global, "", explainRequest{method: "GET", url: "http://127.0.0.1:9099/api/rest/v1/acct-1/x",
		origins: []string{"https://app.example"}}); err != nil || e.Outcome != "allowed" {
		t.Errorf("store in Caddy's storage: %+v, %v; want allowed", e, err)
	}

	// An empty store: no accounts, every account path denied.
	e, err := explainConfig(writeConfig(t.TempDir()), "", explainRequest{method: "GET",
		url: "http://127.0.0.1:9099/api/rest/v1/acct-1/x", origins: []string{"https://app.example"}})
	if err != nil || e.Outcome != "denied" || e.Reason != "account has no rules" {
		t.Errorf("empty store: %+v, %v; want denied, account has no rules", e, err)
	}

	// A storage that cannot be read: its root is a file.
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := writeConfig(notDir)
	if _, err := explainConfig(bad, "", explainRequest{method: "GET", url: "http://127.0.0.1:9099/api/rest/v1/acct-1/x"}); err == nil ||
		!strings.Contains(err.Error(), `store "t"`) {
		t.Errorf("unreadable storage: error %v, want one naming the store", err)
	}

	// The command itself, as a user runs it.
	bin := caddyBinary(t)
	if e := explainJSON(t, bin, "--config", full, "--origin", "https://app.example", "GET",
		"http://127.0.0.1:9099/api/rest/v1/acct-1/x"); e.Outcome != "allowed" {
		t.Errorf("explain command with a store: %+v, want allowed", e)
	}
	if out, errOut, code := runExplainBinary(t, bin, "--config", bad, "GET", "http://127.0.0.1:9099/api/rest/v1/acct-1/x"); code == 0 {
		t.Errorf("explain command, unreadable storage: exit 0\n%s%s", out, errOut)
	}
}
