package atomspherecors

// Refusing bad configuration cheaply, and refusing what could never
// work (docs/behaviour.md §7).
// Each case is checked where a user meets it: Provision of a JSON config,
// the Caddyfile adapter, POST /load and an admin-API edit of a running
// Caddy (admin localhost:2992, site 127.0.0.1:9200, as the reload tests).

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"atomspherecors/internal/policy"
)

// maxReport bounds the text of any refused config's report here: twenty
// short messages and a count.
const maxReport = 8 << 10

// hostileAccounts is a config of problems that each repeat long values:
// one account ID of 100 KiB whose 3 000 rules all have an unknown method,
// the shape that made the whole report grow to 100 MB.
func hostileAccounts(rules int) map[string][]policy.Rule {
	return hostileAccountsID(strings.Repeat("a", 100<<10), rules)
}

// hostileAccountsID is hostileAccounts with the account ID given.
func hostileAccountsID(id string, rules int) map[string][]policy.Rule {
	rs := make([]policy.Rule, rules)
	for i := range rs {
		rs[i] = policy.Rule{Origin: "https://app" + strconv.Itoa(i) + ".example", Methods: []string{"GTE"}}
	}
	return map[string][]policy.Rule{id: rs}
}

// longOriginRules are n rules whose origins are 100 bytes long and whose
// method is unknown.
func longOriginRules(n int) []policy.Rule {
	rs := make([]policy.Rule, n)
	for i := range rs {
		rs[i] = policy.Rule{Origin: "https://" + strings.Repeat("o", 80) + strconv.Itoa(i) + ".example", Methods: []string{"GTE"}}
	}
	return rs
}

func TestValidationReportIsBounded(t *testing.T) {
	for _, rules := range []int{1, 1000, 3000} {
		t.Run(strconv.Itoa(rules)+" rules", func(t *testing.T) {
			cfg := mustJSON(map[string]any{"accounts": hostileAccounts(rules)})
			_, err := loadHandler(t, string(cfg), nil)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if len(msg) > maxReport {
				t.Fatalf("report of %d bytes for a %d-byte config, want at most %d", len(msg), len(cfg), maxReport)
			}
			if !strings.Contains(msg, `method "GTE" is not a known HTTP method`) || !strings.Contains(msg, "(102400 bytes)") {
				t.Errorf("report does not name the problem and the shortened ID: %.300s", msg)
			}
			if more := rules - policy.MaxProblems; more > 0 && !strings.Contains(msg, "and "+strconv.Itoa(more)+" more problems") {
				t.Errorf("report does not count the %d problems it leaves out: %.300s", more, msg)
			}
		})
	}

	t.Run("Caddyfile", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("http://127.0.0.1:9209 {\n\tatomsphere_cors {\n\t\taccount " + strings.Repeat("b", 100<<10) + " {\n")
		for i := range 2000 {
			fmt.Fprintf(&b, "\t\t\torigin https://app%d.example GTE\n", i)
		}
		b.WriteString("\t\t}\n\t}\n}\n")
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(b.String()), map[string]any{"filename": "Caddyfile"})
		if err == nil {
			t.Fatal("adapted")
		}
		if len(err.Error()) > maxReport || !strings.Contains(err.Error(), "at Caddyfile:4") ||
			!strings.Contains(err.Error(), "and 1980 more problems") {
			t.Errorf("adapt error of %d bytes: %.400s", len(err.Error()), err)
		}
	})
}

// TestValidationRunningCaddy sends refused configs and edits to a
// running Caddy: each answer is short, names the problem, and the
// server keeps serving the rules it had.
func TestValidationRunningCaddy(t *testing.T) {
	good := map[string][]policy.Rule{"acct-1": {{Origin: "https://a.example", Methods: []string{"GET"}}}}
	startCaddy(t, "json", string(reloadConfig(good)))
	stillServes := func(t *testing.T) {
		t.Helper()
		res, _ := doRequest(t, "OPTIONS", "http://"+reloadHTTPAddr+"/api/rest/v1/acct-1/x",
			http.Header{"Origin": {"https://a.example"}, "Access-Control-Request-Method": {"GET"}})
		if res.StatusCode != 204 || res.Header.Get("Access-Control-Allow-Origin") != "https://a.example" {
			t.Fatalf("after a refused change the server answers %d %v", res.StatusCode, corsHeaders(res.Header))
		}
		res, _ = doRequest(t, "OPTIONS", "http://"+reloadHTTPAddr+"/api/rest/v1/acct-1/x",
			http.Header{"Origin": {"https://a.example"}, "Access-Control-Request-Method": {"POST"}})
		if res.StatusCode != 401 {
			t.Fatalf("after a refused change a POST preflight got %d, want 401 (the old rule)", res.StatusCode)
		}
	}
	for _, tc := range []struct {
		name, method, path string
		body               []byte
		want               string
	}{
		// 10 KiB, not 100: Caddy's admin API itself joins the account ID
		// into the path of every value under it when it indexes a config
		// (3.4 s at 100 KiB, ten times that under the race detector).
		{"POST /load of 3 000 rules under a 10 KiB account ID", "POST", "/load",
			reloadConfig(hostileAccountsID(strings.Repeat("a", 10<<10), 3000)), "and 2980 more problems"},
		{"PUT of one account of 1 000 rules with 100-byte origins", "PUT", "/id/" + reloadTag + "/accounts/acct-big",
			mustJSON(longOriginRules(1000)), "and 980 more problems"},
		{"an explicit empty methods list", "PATCH", "/id/" + reloadTag + "/accounts/acct-1/0/methods",
			[]byte(`[]`), "methods is empty: omit it for the default GET, POST and DELETE"},
		{"max_age as a JSON number (nanoseconds)", "PUT", "/id/" + reloadTag + "/max_age",
			[]byte(`3600`), `write a duration such as "3600s" or "1h"`},
		{"a placeholder as an account ID", "PUT", "/id/" + reloadTag + "/accounts/%7Benv.ACCT%7D",
			[]byte(`[{"origin":"https://a.example"}]`), "placeholders are not expanded in account IDs"},
		{"an escaped path prefix", "PUT", "/id/" + reloadTag + "/path_prefixes",
			[]byte(`["/api%2Frest/"]`), "prefixes are compared with the decoded path"},
		{"a shadowed path prefix", "PUT", "/id/" + reloadTag + "/path_prefixes",
			[]byte(`["/api/", "/api/rest/v1/"]`), `path prefix "/api/rest/v1/" is never used: the earlier prefix "/api/" matches every path it would`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := adminCall(t, reloadAdmin, tc.method, tc.path, tc.body)
			if status < 400 {
				t.Fatalf("accepted: %d %.200s", status, body)
			}
			if len(body) > maxReport+1024 {
				t.Errorf("answer of %d bytes to a %d-byte request, want at most %d", len(body), len(tc.body), maxReport+1024)
			}
			if !strings.Contains(apiError(t, body), tc.want) {
				t.Errorf("answer does not say %q: %.400s", tc.want, body)
			}
			stillServes(t)
		})
	}
}

// TestValidationRefusesWhatNeverMatches: values that were accepted but
// could never match a request, each refused with a message that says
// what to write instead.
func TestValidationRefusesWhatNeverMatches(t *testing.T) {
	for _, tc := range []struct {
		name, cfg, want string
	}{
		{"explicit empty methods list", `{"accounts":{"a":[{"origin":"https://x.example","methods":[]}]}}`,
			`account "a", rule 1 (origin "https://x.example"): methods is empty: omit it for the default GET, POST and DELETE`},
		{"explicit empty methods list after a rule with the default", `{"accounts":{"a":[{"origin":"https://x.example"},{"origin":"https://y.example","methods":[]}]}}`,
			`account "a", rule 2 (origin "https://y.example"): methods is empty`},
		{"placeholder account ID", `{"accounts":{"{env.ACCT}":[{"origin":"https://x.example"}]}}`,
			`account "{env.ACCT}": placeholders are not expanded in account IDs`},
		{"placeholder in a path prefix", `{"path_prefixes":["/{env.ROOT}/"],"accounts":{}}`,
			`path prefix "/{env.ROOT}/": placeholders are not expanded here`},
		{"escaped slash in a path prefix", `{"path_prefixes":["/api%2Frest/"],"accounts":{}}`,
			`path prefix "/api%2Frest/": prefixes are compared with the decoded path`},
		{"escaped space in a path prefix", `{"path_prefixes":["/api%20v1/"],"accounts":{}}`,
			`path prefix "/api%20v1/": prefixes are compared with the decoded path`},
		{"wildcard in a path prefix", `{"path_prefixes":["/api/*/"],"accounts":{}}`,
			`path prefix "/api/*/": prefixes are compared with the decoded path`},
		{"prefix shadowed by an earlier one", `{"path_prefixes":["/api/","/api/rest/v1/"],"accounts":{}}`,
			`path prefix "/api/rest/v1/" is never used: the earlier prefix "/api/" matches every path it would`},
		{"prefix shadowed by an earlier one in another case", `{"path_prefixes":["/API/","/x/","/api/rest/"],"accounts":{}}`,
			`path prefix "/api/rest/" is never used: the earlier prefix "/API/" matches every path it would`},
		{"the same prefix twice", `{"path_prefixes":["/api/","/api/"],"accounts":{}}`,
			`path prefix "/api/" is never used: the earlier prefix "/api/" matches every path it would`},
		{"path parameter in a path prefix (the guard refuses every path under it)", `{"path_prefixes":["/x;y/"],"accounts":{}}`,
			`path prefix "/x;y/" has a byte some backends read differently`},
		{"backslash in a path prefix", `{"path_prefixes":["/a\\b/"],"accounts":{}}`,
			`path prefix "/a\\b/" has a byte some backends read differently`},
		{"non-ASCII path prefix", `{"path_prefixes":["/ünï/"],"accounts":{}}`,
			`path prefix "/ünï/" has a byte some backends read differently`},
		{"path prefix segment that ends in a dot", `{"path_prefixes":["/api/v1./"],"accounts":{}}`,
			`path prefix "/api/v1./" has a byte some backends read differently (';', '#', '?', '\', a space, a control character, a byte over 0x7f) or a segment that ends in a dot: the path guard would refuse every request under it with 400; choose another prefix, or set disable_path_guard`},
		{"max_age as a JSON number of seconds", `{"max_age":3600,"accounts":{}}`,
			`max_age 3.6µs is under one second, and would be sent as 0: a JSON number is nanoseconds, so write a duration such as "3600s" or "1h"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadHandler(t, tc.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// Controls: the same values where they can match are accepted.
	for _, cfg := range []string{
		`{"path_prefixes":["/api/rest/v1/","/api/"],"accounts":{}}`, // the longer first: both used
		`{"path_prefixes":["/api/v1.0/"],"accounts":{}}`,            // a dot inside a segment
		`{"path_prefixes":["/x;y/","/a./"],"disable_path_guard":true,"accounts":{}}`,
		`{"max_age":"1s","accounts":{}}`,
		`{"max_age":0,"accounts":{}}`,
		`{"accounts":{"a":[{"origin":"https://x.example"}]}}`,
	} {
		if _, err := loadHandler(t, cfg, nil); err != nil {
			t.Errorf("%s refused: %v", cfg, err)
		}
	}

	// From a Caddyfile, the same refusals carry their lines.
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`http://127.0.0.1:9209 {
	atomsphere_cors {
		path_prefix /api/ /api/rest/v1/
		account {env.ACCT} {
			origin https://x.example
		}
	}
}
`), map[string]any{"filename": "Caddyfile"})
	for _, want := range []string{
		`path prefix "/api/rest/v1/" is never used: the earlier prefix "/api/" matches every path it would, at Caddyfile:3`,
		`account "{env.ACCT}": placeholders are not expanded in account IDs (in a Caddyfile, {$VAR} reads an environment variable), at Caddyfile:4`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("adapt error %v, want one containing %q", err, want)
		}
	}
}

// TestValidationReportInConfigOrder: problems are reported in the order
// of the config: rules by position (rule 2 before rule 10), Caddyfile
// problems by line.
func TestValidationReportInConfigOrder(t *testing.T) {
	rules := make([]policy.Rule, 12)
	for i := range rules {
		rules[i] = policy.Rule{Origin: "https://ok" + strconv.Itoa(i) + ".example"}
	}
	rules[1].Origin, rules[9].Origin = "ftp://two.example", "ftp://ten.example"
	_, err := loadHandler(t, string(mustJSON(map[string]any{"accounts": map[string][]policy.Rule{"b": rules, "a": {{Origin: "null"}}}})), nil)
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	a, two, ten := strings.Index(msg, `account "a"`), strings.Index(msg, "rule 2 "), strings.Index(msg, "rule 10 ")
	if a < 0 || two < 0 || ten < 0 || !(a < two && two < ten) {
		t.Errorf("report not in config order (account a, then b's rule 2, then rule 10):\n%s", msg)
	}
}

// BenchmarkValidateHeaders validates allow_headers lists of growing
// length: the time per header must stay flat (it grew with the list's
// length when repeats were found by scanning).
func BenchmarkValidateHeaders(b *testing.B) {
	for _, n := range []int{10_000, 20_000, 40_000, 80_000} {
		names := make([]string, n)
		for i := range names {
			names[i] = "x-header-" + strconv.Itoa(i)
		}
		h := &Handler{AllowHeaders: names}
		b.Run("headers="+strconv.Itoa(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := newIndex(h, false, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/header")
		})
	}
}
