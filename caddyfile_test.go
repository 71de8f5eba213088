package atomspherecors

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
)

// TestUnmarshalCaddyfile parses every subdirective into the JSON fields.
func TestUnmarshalCaddyfile(t *testing.T) {
	dur := func(d time.Duration) *caddy.Duration { c := caddy.Duration(d); return &c }
	cases := []struct {
		desc  string
		input string
		want  Handler
	}{
		{
			desc: "every subdirective, rules with and without methods",
			input: `atomsphere_cors {
				path_prefix      /api/rest/v1/ /partner/api/rest/v1/
				allow_headers    cache-control content-type
				expose_headers   x-request-id X-Total-Count
				max_age          90s
				preflight_status 200
				account account-123456 {
					origin https://mydomain.com GET POST DELETE
					origin http://localhost:8080 get
				}
				account account-987654 {
					origin https://app.example.org:8443
				}
			}`,
			want: Handler{
				PathPrefixes:    []string{"/api/rest/v1/", "/partner/api/rest/v1/"},
				AllowHeaders:    []string{"cache-control", "content-type"},
				ExposeHeaders:   []string{"x-request-id", "X-Total-Count"},
				MaxAge:          dur(90 * time.Second),
				PreflightStatus: 200,
				Accounts: map[string][]policy.Rule{
					"account-123456": {
						{Origin: "https://mydomain.com", Methods: []string{"GET", "POST", "DELETE"}},
						{Origin: "http://localhost:8080", Methods: []string{"get"}},
					},
					"account-987654": {{Origin: "https://app.example.org:8443"}},
				},
			},
		},
		{
			desc:  "no block: every default",
			input: `atomsphere_cors`,
			want:  Handler{Accounts: map[string][]policy.Rule{}},
		},
		{
			desc:  "empty block, empty account",
			input: "atomsphere_cors {\n\taccount account-1 {\n\t}\n}",
			want:  Handler{Accounts: map[string][]policy.Rule{"account-1": {}}},
		},
		{
			desc:  "max_age in days (Caddy duration syntax)",
			input: "atomsphere_cors {\n\tmax_age 1d\n}",
			want:  Handler{MaxAge: dur(24 * time.Hour), Accounts: map[string][]policy.Rule{}},
		},
		{
			desc:  "max_age 0",
			input: "atomsphere_cors {\n\tmax_age 0s\n}",
			want:  Handler{MaxAge: dur(0), Accounts: map[string][]policy.Rule{}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatalf("UnmarshalCaddyfile: %v", err)
			}
			if !reflect.DeepEqual(h, tc.want) {
				gotJSON, _ := json.Marshal(h)
				wantJSON, _ := json.Marshal(tc.want)
				t.Errorf("got  %s\nwant %s", gotJSON, wantJSON)
			}
		})
	}
}

// TestCaddyfileProvisioned checks that a parsed Caddyfile provisions
// into the behaviour it says: custom values on the wire, methods
// upper-cased, a rule without methods allowing GET, POST and DELETE.
func TestCaddyfileProvisioned(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`atomsphere_cors {
		path_prefix /v2/
		allow_headers X-Custom
		max_age 2m
		preflight_status 200
		account acct {
			origin http://localhost:8080 get delete
			origin https://mydomain.com
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	h.setLogger(zap.NewNop())
	for _, tc := range []struct{ origin, methods string }{
		{"http://localhost:8080", "GET, DELETE"},
		{mydomain, "GET, POST, DELETE"},
	} {
		req := httptest.NewRequest("OPTIONS", "/v2/acct/x", nil)
		req.Header = preflightHdr(tc.origin, "DELETE")
		rec := httptest.NewRecorder()
		if err := h.ServeHTTP(rec, req, nextHandler(nextOK)); err != nil {
			t.Fatalf("preflight from %s: %v", tc.origin, err)
		}
		if rec.Code != 200 {
			t.Errorf("preflight from %s: status %d, want 200", tc.origin, rec.Code)
		}
		assertCORSHeaders(t, rec.Header(), http.Header{
			"Access-Control-Allow-Origin":      {tc.origin},
			"Access-Control-Allow-Credentials": {"true"},
			"Access-Control-Allow-Methods":     {tc.methods},
			"Access-Control-Allow-Headers":     {"x-custom"},
			"Access-Control-Max-Age":           {"120"},
			"Vary":                             {wantVaryPreflight},
		})
	}
}

// TestUnmarshalCaddyfileErrors: every error carries the file and line
// of the bad token, and all value errors of a block are reported.
func TestUnmarshalCaddyfileErrors(t *testing.T) {
	cases := []struct {
		desc    string
		input   string
		wantErr []string
	}{
		{"argument after the directive",
			"atomsphere_cors extra {\n}",
			[]string{"wrong argument count or unexpected line ending after 'extra', at Testfile:1"}},
		{"unknown subdirective",
			"atomsphere_cors {\n\tmax_age 1h\n\tallow_origins https://mydomain.com\n}",
			[]string{`unrecognized subdirective "allow_origins", at Testfile:3`}},
		{"unknown subdirective inside an account",
			"atomsphere_cors {\n\taccount a {\n\t\torigin https://mydomain.com\n\t\tmethods GET\n\t}\n}",
			[]string{`account "a": unrecognized subdirective "methods", at Testfile:4`}},
		{"repeated subdirective",
			"atomsphere_cors {\n\tmax_age 1h\n\tpreflight_status 204\n\tmax_age 2h\n}",
			[]string{"max_age already specified, at Testfile:4"}},
		{"repeated path_prefix",
			"atomsphere_cors {\n\tpath_prefix /a/\n\tpath_prefix /b/\n}",
			[]string{"path_prefix already specified, at Testfile:3"}},
		{"repeated account",
			"atomsphere_cors {\n\taccount a {\n\t\torigin https://x.example\n\t}\n\taccount a {\n\t\torigin https://y.example\n\t}\n}",
			[]string{`account "a" already specified, at Testfile:5`}},
		{"path_prefix without argument",
			"atomsphere_cors {\n\tpath_prefix\n}",
			[]string{"wrong argument count or unexpected line ending after 'path_prefix', at Testfile:2"}},
		{"allow_headers without argument",
			"atomsphere_cors {\n\tallow_headers\n}",
			[]string{"wrong argument count or unexpected line ending after 'allow_headers', at Testfile:2"}},
		{"max_age with two arguments",
			"atomsphere_cors {\n\tmax_age 1h 2h\n}",
			[]string{"wrong argument count or unexpected line ending after '1h', at Testfile:2"}},
		{"preflight_status without argument",
			"atomsphere_cors {\n\tpreflight_status\n}",
			[]string{"wrong argument count or unexpected line ending after 'preflight_status', at Testfile:2"}},
		{"account without ID",
			"atomsphere_cors {\n\taccount {\n\t\torigin https://x.example\n\t}\n}",
			[]string{"wrong argument count or unexpected line ending after 'account', at Testfile:2"}},
		{"origin without value",
			"atomsphere_cors {\n\taccount a {\n\t\torigin\n\t}\n}",
			[]string{"wrong argument count or unexpected line ending after 'origin', at Testfile:3"}},
		{"max_age not a duration",
			"atomsphere_cors {\n\tmax_age soon\n}",
			[]string{`max_age "soon": `, ", at Testfile:2"}},
		{"max_age negative",
			"atomsphere_cors {\n\n\tmax_age -5s\n}",
			[]string{"max_age -5s is negative, at Testfile:3"}},
		{"preflight_status not a number",
			"atomsphere_cors {\n\tpreflight_status ok\n}",
			[]string{`preflight_status "ok" is not a number, at Testfile:2`}},
		{"preflight_status outside 200-299",
			"atomsphere_cors {\n\tpreflight_status 401\n}",
			[]string{"preflight_status 401 is outside 200-299, at Testfile:2"}},
		{"bad path prefix",
			"atomsphere_cors {\n\tpath_prefix /api/rest/v1/ /partner/api\n}",
			[]string{`path prefix "/partner/api" must start and end with /, at Testfile:2`}},
		{"account ID with /",
			"atomsphere_cors {\n\taccount a/b {\n\t\torigin https://x.example\n\t}\n}",
			[]string{`account "a/b": account ID must not contain /, at Testfile:2`}},
		{"bad origin names the account, the rule and the line",
			"atomsphere_cors {\n\taccount account-123456 {\n\t\torigin https://ok.example\n\t\torigin https://ok2.example GET\n\t\torigin https://mydomain.com/ GET\n\t}\n}",
			[]string{`account "account-123456", rule 3 (origin "https://mydomain.com/"): origin must not have a path, at Testfile:5`}},
		{"bad method names the account, the rule and the line",
			"atomsphere_cors {\n\taccount account-123456 {\n\t\torigin https://mydomain.com GET OPTIONS\n\t}\n}",
			[]string{`account "account-123456", rule 1 (origin "https://mydomain.com"): method "OPTIONS" cannot be allowed, at Testfile:3`}},
		{"several bad lines all reported, each with its line",
			`atomsphere_cors {
	path_prefix /api
	preflight_status 99
	max_age -1m
	account a/b {
		origin https://x.example
	}
	account account-1 {
		origin ftp://x.example
		origin https://ok.example
		origin https://y.example:0 GET FETCH
	}
}`,
			[]string{
				`path prefix "/api" must start and end with /, at Testfile:2`,
				"preflight_status 99 is outside 200-299, at Testfile:3",
				"max_age -1m0s is negative, at Testfile:4",
				`account "a/b": account ID must not contain /, at Testfile:5`,
				`account "account-1", rule 1 (origin "ftp://x.example"): scheme "ftp" is not http or https, at Testfile:9`,
				`account "account-1", rule 3 (origin "https://y.example:0"): port "0" is outside 1-65535, at Testfile:11`,
				`account "account-1", rule 3 (origin "https://y.example:0"): method "FETCH" is not a known HTTP method, at Testfile:11`,
			}},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil {
				t.Fatalf("accepted, want an error containing %q", tc.wantErr)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\ndoes not contain %q", err, want)
				}
			}
		})
	}
}

// TestCaddyfileAdapt checks the JSON a Caddyfile adapts to, matcher
// token included (docs/behaviour.md §7, §7).
func TestCaddyfileAdapt(t *testing.T) {
	caddytest.AssertAdapt(t, `{
	admin localhost:2999
	persist_config off
}

http://127.0.0.1:9050 {
	bind 127.0.0.1
	atomsphere_cors /api/* {
		path_prefix /api/rest/v1/
		allow_headers content-type authorization
		expose_headers x-request-id
		max_age 10m
		preflight_status 200
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
			origin http://localhost:8080
		}
	}
	respond "ok" 200
}
`, "caddyfile", `{
	"admin": {
		"listen": "localhost:2999",
		"config": {
			"persist": false
		}
	},
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						"127.0.0.1:9050"
					],
					"routes": [
						{
							"match": [
								{
									"host": [
										"127.0.0.1"
									]
								}
							],
							"handle": [
								{
									"handler": "subroute",
									"routes": [
										{
											"handle": [
												{
													"accounts": {
														"account-123456": [
															{
																"methods": [
																	"GET",
																	"POST",
																	"DELETE"
																],
																"origin": "https://mydomain.com"
															},
															{
																"origin": "http://localhost:8080"
															}
														]
													},
													"allow_headers": [
														"content-type",
														"authorization"
													],
													"expose_headers": [
														"x-request-id"
													],
													"handler": "atomsphere_cors",
													"max_age": 600000000000,
													"path_prefixes": [
														"/api/rest/v1/"
													],
													"preflight_status": 200
												}
											],
											"match": [
												{
													"path": [
														"/api/*"
													]
												}
											]
										},
										{
											"handle": [
												{
													"body": "ok",
													"handler": "static_response",
													"status_code": 200
												}
											]
										}
									]
								}
							],
							"terminal": true
						}
					],
					"automatic_https": {
						"skip": [
							"127.0.0.1"
						]
					}
				}
			}
		}
	}
}`)
}

// TestCaddyfileOrderBeforeBasicAuth: with no order option, the
// directive's route comes before basic_auth's, whatever the order in
// the site block (docs/behaviour.md §7).
func TestCaddyfileOrderBeforeBasicAuth(t *testing.T) {
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`{
	admin localhost:2999
}
http://127.0.0.1:9050 {
	bind 127.0.0.1
	respond "ok" 200
	basic_auth {
		demo $2a$10$EjKxOMqe6BWunYrjzSUfFeh46V5YrY0UFA06zS7aJ1CJCZOgwFzIO
	}
	atomsphere_cors {
		account a {
			origin https://mydomain.com
		}
	}
}
`), nil)
	if err != nil {
		t.Fatalf("adapting a site with basic_auth and atomsphere_cors and no order option: %v", err)
	}
	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	var order []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if name, ok := v["handler"].(string); ok {
				order = append(order, name)
			}
			// Visit keys in a fixed order; handler lists are arrays, so
			// their order is kept.
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				walk(v[k])
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(cfg)
	cors, auth := slices.Index(order, "atomsphere_cors"), slices.Index(order, "authentication")
	if cors < 0 || auth < 0 || cors > auth {
		t.Errorf("handler order %v: want atomsphere_cors before authentication (basic_auth)", order)
	}
}

// TestCaddyfileAdaptErrors: `caddy adapt` refuses a bad Caddyfile, the
// error naming the account, the rule, the file and the line.
func TestCaddyfileAdaptErrors(t *testing.T) {
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`http://127.0.0.1:9050 {
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com
			origin https://mydomain.com/ GET
			origin http://localhost:8080 CONNECT
		}
	}
}
`), map[string]any{"filename": "Caddyfile"})
	if err == nil {
		t.Fatal("a bad Caddyfile adapted without error")
	}
	for _, want := range []string{
		`account "account-123456", rule 2 (origin "https://mydomain.com/"): origin must not have a path, at Caddyfile:5`,
		`account "account-123456", rule 3 (origin "http://localhost:8080"): method "CONNECT" cannot be allowed, at Caddyfile:6`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q\ndoes not contain %q", err, want)
		}
	}
}

// TestCaddyfilePathPrefixesAlias: path_prefixes, the JSON key's name, is
// accepted for path_prefix, and the two are one subdirective.
func TestCaddyfilePathPrefixesAlias(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("atomsphere_cors {\n\tpath_prefixes /a/ /b/\n}")); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(h.PathPrefixes, []string{"/a/", "/b/"}) {
		t.Errorf("path_prefixes gave %q", h.PathPrefixes)
	}
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("atomsphere_cors {\n\tpath_prefix /a/\n\tpath_prefixes /b/\n}"))
	if err == nil || !strings.Contains(err.Error(), "path_prefixes already specified, at Testfile:3") {
		t.Errorf("both spellings: %v", err)
	}
}
