package atomspherecors

// The handler beyond the behaviour table of module_test.go: header values
// never shared between responses, the decision's debug log entry, and the
// errors Provision gives for a bad config.

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestServeHTTPSharedValues checks that a later writer rewriting a
// header value of one response cannot change another response.
func TestServeHTTPSharedValues(t *testing.T) {
	h := mustLoadHandler(t, behaviourConfig, nil)
	for _, tc := range []struct {
		method string
		hdr    http.Header
		want   http.Header
	}{
		{"OPTIONS", preflightHdr(mydomain, "GET"), wantPreflightOK(mydomain, "GET, POST, DELETE")},
		{"GET", originHdr(mydomain), wantNormalOK(mydomain)},
		{"OPTIONS", preflightHdr(mydomain, "PUT"), wantPreflightDenied},
		{"GET", originHdr("https://evil.example"), wantNormalDenied},
	} {
		for round := range 2 {
			req := httptest.NewRequest(tc.method, pathA, nil)
			req.Header = tc.hdr.Clone()
			rec := httptest.NewRecorder()
			_ = h.ServeHTTP(rec, req, nextHandler(nextOK))
			assertCORSHeaders(t, rec.Header(), tc.want)
			// A later handler rewriting values in place, as the header
			// directive's replace operation does: if the handler shared
			// a value slice between responses, the next round sees it.
			for _, v := range rec.Header() {
				for i := range v {
					v[i] = "tampered in round " + strconv.Itoa(round)
				}
			}
		}
	}
}

// TestDecisionLog checks docs/behaviour.md §8: each decision is logged at debug
// level with account, origin, method, outcome and reason; nothing is
// logged at info level.
func TestDecisionLog(t *testing.T) {
	h := mustLoadHandler(t, behaviourConfig, nil)
	send := func(method string, hdr http.Header) {
		req := httptest.NewRequest(method, pathA, nil)
		req.Header = hdr
		_ = h.ServeHTTP(httptest.NewRecorder(), req, nextHandler(nextOK))
	}

	core, logs := observer.New(zapcore.DebugLevel)
	h.setLogger(zap.New(core))
	send("OPTIONS", preflightHdr("https://evil.example", "GET"))
	send("OPTIONS", preflightHdr(mydomain, "PUT"))
	send("GET", originHdr(mydomain))
	want := []struct {
		msg    string
		fields map[string]any
	}{
		{"preflight", map[string]any{"account": "account-123456", "origin": []any{"https://evil.example"},
			"method": "GET", "outcome": "denied", "reason": "origin not allowed"}},
		{"preflight", map[string]any{"account": "account-123456", "origin": []any{mydomain},
			"method": "PUT", "outcome": "denied", "reason": "method not allowed"}},
		{"request", map[string]any{"account": "account-123456", "origin": []any{mydomain},
			"method": "GET", "outcome": "allowed"}},
	}
	entries := logs.All()
	if len(entries) != len(want) {
		t.Fatalf("got %d debug entries, want %d: %v", len(entries), len(want), entries)
	}
	for i, e := range entries {
		if e.Level != zapcore.DebugLevel || e.Message != want[i].msg {
			t.Errorf("entry %d: %s %q, want debug %q", i, e.Level, e.Message, want[i].msg)
		}
		fields := e.ContextMap()
		// zap.Strings gives []interface{} through ContextMap.
		if !reflect.DeepEqual(normaliseFields(fields), want[i].fields) {
			t.Errorf("entry %d fields %v, want %v", i, fields, want[i].fields)
		}
	}

	core, logs = observer.New(zapcore.InfoLevel)
	h.setLogger(zap.New(core))
	send("OPTIONS", preflightHdr("https://evil.example", "GET"))
	send("OPTIONS", preflightHdr(mydomain, "GET"))
	send("GET", originHdr(mydomain))
	send("GET", originHdr("https://evil.example"))
	if n := logs.Len(); n != 0 {
		t.Errorf("at info level %d entries were logged, want none: %v", n, logs.All())
	}
}

// normaliseFields turns the []string of zap.Strings into []any, as
// JSON decoding would give.
func normaliseFields(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if ss, ok := v.([]string); ok {
			a := make([]any, len(ss))
			for i, s := range ss {
				a[i] = s
			}
			v = a
		} else if aa, ok := v.([]any); ok {
			v = slices.Clone(aa)
		}
		out[k] = v
	}
	return out
}

// TestProvisionValidation: every refusal of docs/behaviour.md §7 is an error
// naming the account and the rule (0-based index, origin as written).
func TestProvisionValidation(t *testing.T) {
	// rule2 puts a bad rule third in account-123456 (index 2 in JSON): "rule 3".
	rule2 := func(rule string) string {
		return `{"accounts": {"account-123456": [
			{"origin": "https://ok.example"},
			{"origin": "https://ok2.example", "methods": ["GET"]},
			` + rule + `]}}`
	}
	okAccounts := `"accounts": {"account-123456": [{"origin": "https://mydomain.com"}]}`
	const at = `account "account-123456", rule 3 `
	cases := []struct {
		desc    string
		config  string
		wantErr []string
	}{
		{"scheme ftp", rule2(`{"origin": "ftp://mydomain.com"}`),
			[]string{at + `(origin "ftp://mydomain.com"): scheme "ftp" is not http or https`}},
		{"scheme ws", rule2(`{"origin": "ws://mydomain.com"}`),
			[]string{at + `(origin "ws://mydomain.com"): scheme "ws" is not http or https`}},
		{"no scheme", rule2(`{"origin": "mydomain.com"}`),
			[]string{at + `(origin "mydomain.com"): origin must have the form scheme://host[:port]`}},
		{"lone / path", rule2(`{"origin": "https://mydomain.com/"}`),
			[]string{at + `(origin "https://mydomain.com/"): origin must not have a path`}},
		{"path", rule2(`{"origin": "https://mydomain.com/app"}`),
			[]string{at + `(origin "https://mydomain.com/app"): origin must not have a path`}},
		{"query", rule2(`{"origin": "https://mydomain.com?x=1"}`),
			[]string{at + `(origin "https://mydomain.com?x=1"): origin must not have a query`}},
		{"fragment", rule2(`{"origin": "https://mydomain.com#top"}`),
			[]string{at + `(origin "https://mydomain.com#top"): origin must not have a fragment`}},
		{"user info", rule2(`{"origin": "https://user:pw@mydomain.com"}`),
			[]string{at + `(origin "https://user:pw@mydomain.com"): origin must not have user info`}},
		{"wildcard *", rule2(`{"origin": "*"}`),
			[]string{at + `(origin "*"): wildcard origins are not supported`}},
		{"wildcard subdomain", rule2(`{"origin": "https://*.mydomain.com"}`),
			[]string{at + `(origin "https://*.mydomain.com"): wildcard origins are not supported`}},
		{"null", rule2(`{"origin": "null"}`),
			[]string{at + `(origin "null"): the "null" origin cannot be allowed`}},
		{"empty origin", rule2(`{"origin": ""}`),
			[]string{at + `(origin ""): origin is empty`}},
		{"missing host", rule2(`{"origin": "https://"}`),
			[]string{at + `(origin "https://"): origin has no host`}},
		{"missing host with port", rule2(`{"origin": "https://:8443"}`),
			[]string{at + `(origin "https://:8443"): origin has no host`}},
		{"port 0", rule2(`{"origin": "https://mydomain.com:0"}`),
			[]string{at + `(origin "https://mydomain.com:0"): port "0" is outside 1-65535`}},
		{"port 65536", rule2(`{"origin": "https://mydomain.com:65536"}`),
			[]string{at + `(origin "https://mydomain.com:65536"): port "65536" is outside 1-65535`}},
		{"port not a number", rule2(`{"origin": "https://mydomain.com:https"}`),
			[]string{at + `(origin "https://mydomain.com:https"): port "https" is not a number`}},
		{"empty port", rule2(`{"origin": "https://mydomain.com:"}`),
			[]string{at + `(origin "https://mydomain.com:"): port is empty`}},
		{"trailing dot", rule2(`{"origin": "https://mydomain.com."}`),
			[]string{at + `(origin "https://mydomain.com."): host "mydomain.com." must not end with a dot`}},
		{"unknown method", rule2(`{"origin": "https://mydomain.com", "methods": ["GET", "FETCH"]}`),
			[]string{at + `(origin "https://mydomain.com"): method "FETCH" is not a known HTTP method`}},
		{"OPTIONS", rule2(`{"origin": "https://mydomain.com", "methods": ["options"]}`),
			[]string{at + `(origin "https://mydomain.com"): method "options" cannot be allowed`}},
		{"CONNECT", rule2(`{"origin": "https://mydomain.com", "methods": ["CONNECT"]}`),
			[]string{at + `(origin "https://mydomain.com"): method "CONNECT" cannot be allowed`}},
		{"TRACE", rule2(`{"origin": "https://mydomain.com", "methods": ["TRACE"]}`),
			[]string{at + `(origin "https://mydomain.com"): method "TRACE" cannot be allowed`}},
		{"* method", rule2(`{"origin": "https://mydomain.com", "methods": ["*"]}`),
			[]string{at + `(origin "https://mydomain.com"): the wildcard method "*" is not supported`}},
		{"empty account ID", `{"accounts": {"": [{"origin": "https://mydomain.com"}]}}`,
			[]string{`account ID is empty`}},
		{"/ in account ID", `{"accounts": {"account/123456": [{"origin": "https://mydomain.com"}]}}`,
			[]string{`account "account/123456": account ID must not contain /`}},
		{"path prefix without leading /", `{"path_prefixes": ["api/rest/v1/"], ` + okAccounts + `}`,
			[]string{`path prefix "api/rest/v1/" must start and end with /`}},
		{"path prefix without trailing /", `{"path_prefixes": ["/api/rest/v1/", "/partner/api/rest/v1"], ` + okAccounts + `}`,
			[]string{`path prefix "/partner/api/rest/v1" must start and end with /`}},
		{"empty path prefix", `{"path_prefixes": [""], ` + okAccounts + `}`,
			[]string{`path prefix "" must start and end with /`}},
		{"preflight_status 199", `{"preflight_status": 199, ` + okAccounts + `}`,
			[]string{`preflight_status 199 is outside 200-299`}},
		{"preflight_status 300", `{"preflight_status": 300, ` + okAccounts + `}`,
			[]string{`preflight_status 300 is outside 200-299`}},
		{"preflight_status 401", `{"preflight_status": 401, ` + okAccounts + `}`,
			[]string{`preflight_status 401 is outside 200-299`}},
		{"negative max_age string", `{"max_age": "-1s", ` + okAccounts + `}`,
			[]string{`max_age -1s is negative`}},
		{"negative max_age nanoseconds", `{"max_age": -1000000000, ` + okAccounts + `}`,
			[]string{`max_age -1s is negative`}},
		{"every problem in one error", `{
			"path_prefixes": ["/api/"],
			"preflight_status": 100,
			"max_age": "-1h",
			"accounts": {
				"account-1": [{"origin": "https://a.example"}, {"origin": "https://a.example/"}],
				"account-2": [{"origin": "null", "methods": ["GET", "TRACE"]}],
				"a/b": []
			}}`,
			[]string{
				`preflight_status 100 is outside 200-299`,
				`max_age -1h0m0s is negative`,
				`account "account-1", rule 2 (origin "https://a.example/"): origin must not have a path`,
				`account "account-2", rule 1 (origin "null"): the "null" origin cannot be allowed`,
				`account "account-2", rule 1 (origin "null"): method "TRACE" cannot be allowed`,
				`account "a/b": account ID must not contain /`,
			}},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := loadHandler(t, tc.config, nil)
			if err == nil {
				t.Fatalf("config accepted, want an error containing %q", tc.wantErr)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\ndoes not contain %q", err, want)
				}
			}
		})
	}

	t.Run("the docs/behaviour.md §7 example is accepted", func(t *testing.T) {
		mustLoadHandler(t, `{
			"path_prefixes": ["/api/rest/v1/", "/partner/api/rest/v1/"],
			"allow_headers": ["cache-control", "content-type", "expires", "last-modified",
			                  "accept", "content-language", "authorization", "pragma"],
			"expose_headers": [],
			"max_age": "1h",
			"preflight_status": 204,
			"accounts": {
				"account-123456": [
					{"origin": "https://mydomain.com", "methods": ["GET", "POST", "DELETE"]},
					{"origin": "http://localhost:8080", "methods": ["GET"]}
				]
			}
		}`, nil)
	})
}
