package atomspherecors

// Two tenants, two upstreams, and the config shapes a site can put the
// module in. https://evil.example is allowed on acct-evil only and
// https://victim.example on acct-victim only; the attacker is a page on
// evil.example that the victim's browser runs with the victim's
// cookies. It wins if any response to it carries acct-victim's data (or
// an error route's answer on acct-victim's path) together with
// Access-Control-Allow-Origin: https://evil.example.
//
// Ports: 9414-9429 on 127.0.0.1 (loopback only), admin localhost:2994.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

const (
	evilOrigin   = "https://evil.example"
	victimOrigin = "https://victim.example"
)

// twoTenants is the module's account block for both tenants.
const twoTenants = `
		account acct-evil {
			origin https://evil.example GET POST DELETE
		}
		account acct-victim {
			origin https://victim.example GET POST DELETE
		}`

// rawPathRouter is a backend that routes on the raw request target, as
// Express 4 routes "/api/rest/v1/:account/*": it splits the path before
// decoding it, so "%2f" stays inside a segment and ".." is not resolved,
// then decodes the account parameter. It serves that account's data and,
// carelessly, reflects any Origin with credentials.
func rawPathRouter() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Behind a rewrite, the target as the client sent it comes in a
		// header, as FastCGI's REQUEST_URI passes it on; the app is
		// mounted under /partner there.
		target := r.RequestURI
		if orig := r.Header.Get("X-Orig-Uri"); orig != "" {
			target = strings.TrimPrefix(orig, "/partner")
		}
		raw, _, _ := strings.Cut(target, "?")
		h := w.Header()
		h["Access-Control-Allow-Origin"] = r.Header["Origin"]
		h.Set("Access-Control-Allow-Credentials", "true")
		segs := strings.Split(raw, "/")
		// "", "api", "rest", "v1", account, ...
		if len(segs) < 5 || segs[1] != "api" || segs[2] != "rest" || segs[3] != "v1" || segs[4] == "" {
			http.NotFound(w, r)
			return
		}
		acct, err := url.PathUnescape(segs[4])
		if err != nil {
			http.Error(w, "bad account", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "data of "+acct)
	}))
}

// TestSecurityRawPathRouterAccount: a target on which Caddy and a
// raw-path router read different accounts is refused with 400 (the
// path guard, docs/behaviour.md §5) instead of letting evil.example read
// acct-victim's data: one request from the page for each reading.
func TestSecurityRawPathRouterAccount(t *testing.T) {
	up := rawPathRouter()
	defer up.Close()
	startSites(t, fmt.Sprintf(`http://:9420 {
	atomsphere_cors {%[1]s
	}
	reverse_proxy %[2]s
}
http://:9418 {
	handle_path /partner/* {
		atomsphere_cors {%[1]s
		}
		reverse_proxy %[2]s {
			header_up X-Orig-Uri {http.request.orig_uri}
		}
	}
}`, twoTenants, up.Listener.Addr().String()))

	// Under handle_path the module sees the path with /partner stripped
	// (decoded and cleaned by the rewrite), while the backend reads the
	// target as sent.
	for _, target := range []string{
		"/partner/api/rest/v1/acct-victim/..%2facct-evil/x",
		"/partner/api/rest/v1/acct-victim/%2e%2e%2facct-evil/x",
		"/partner/api/rest/v1/acct-victim/..%2f..%2f..%2fx",
	} {
		res, body := rawRequest(t, "127.0.0.1:9418", "GET", target, hdrs(hOrigin(evilOrigin)))
		if res.StatusCode != http.StatusBadRequest || res.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("GET %s under handle_path: %d %q ACAO %q, want 400 and none", target, res.StatusCode, body,
				res.Header.Get("Access-Control-Allow-Origin"))
		}
	}
	if res, body := rawRequest(t, "127.0.0.1:9418", "GET", "/partner/api/rest/v1/acct-evil/x", hdrs(hOrigin(evilOrigin))); res.StatusCode != 200 ||
		body != "data of acct-evil" || res.Header.Get("Access-Control-Allow-Origin") != evilOrigin {
		t.Errorf("control under handle_path: %d %q ACAO %q", res.StatusCode, body, res.Header.Get("Access-Control-Allow-Origin"))
	}

	const v, e = "/api/rest/v1/acct-victim", "/api/rest/v1/acct-evil"
	for _, target := range []string{
		v + "/..%2facct-evil/data",
		v + "/..%2Facct-evil/data",
		v + "/..%2f",
		v + "/x%2f..%2f..",
		v + "/x%2f..%2f..%2facct-evil/data",
		v + "%00%2f..%2facct-evil/data",
		v + "%23/..%2facct-evil/data",
		v + "%3f/..%2facct-evil/data",
		v + "/..%ef%bc%8facct-evil/data",
		e + "/..%20/acct-victim/data",
		e + "/..%09/acct-victim/data",
		e + "/.../acct-victim/data",
		e + "/..%2e/acct-victim/data",
		e + "/..%00/acct-victim/data",
		e + "/%ef%bc%8e%ef%bc%8e/acct-victim/data",
		e + "/..%ef%bc%bcacct-victim/data",
		e + "/%2e%2e/acct-victim/data",
		"/api/re%C5%BFt/v1/acct-victim/x",
		"/ap%C4%B1/rest/v1/acct-victim/x",
		"/api/rest/v1/acct-evil%2f..%2facct-victim/x",
		// A raw "|" or "^": Go escapes the decoded path again, and
		// reverse_proxy forwards "/acct-victim/../acct-evil/data%7C".
		v + "/..%2facct-evil/data|",
		v + "/..%2facct-evil/data^",
		v + "/%2e%2e%2facct-evil/data|",
		v + "/..%2f..%2f..%2fx|",
		// Unicode white space and invisible characters.
		e + "/..%E2%80%A8/acct-victim/data",
		e + "/..%EF%BB%BF/acct-victim/data",
		"/api/rest/v1%E2%80%A8/acct-victim/x",
		"/ap%C2%ADi/rest/v1/acct-victim/x",
		e + "/..%E2%88%95acct-victim/x",
	} {
		for _, method := range []string{"GET", "OPTIONS"} {
			lines := hdrs(hOrigin(evilOrigin))
			if method == "OPTIONS" {
				lines = hdrs(hOrigin(evilOrigin), hACRM("GET"))
			}
			res, body := rawRequest(t, "127.0.0.1:9420", method, target, lines)
			if strings.Contains(body, "acct-victim") && res.Header.Get("Access-Control-Allow-Origin") == evilOrigin {
				t.Errorf("%s %s: evil.example reads %q", method, target, body)
			}
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("%s %s: %d %q, want 400", method, target, res.StatusCode, body)
			}
			ac := corsHeaders(res.Header)
			delete(ac, "Vary")
			if len(ac) != 0 {
				t.Errorf("%s %s: Access-Control-* headers %v, want none", method, target, ac)
			}
			if !varyHasToken(res.Header, "Origin") {
				t.Errorf("%s %s: Vary %q lacks Origin", method, target, res.Header["Vary"])
			}
		}
	}
	// Controls: the same backend, ordinary targets.
	for _, tc := range []struct {
		target, origin, acao, body string
	}{
		{e + "/data", evilOrigin, evilOrigin, "data of acct-evil"},
		{v + "/data", evilOrigin, "", "data of acct-victim"},
		{v + "/data", victimOrigin, victimOrigin, "data of acct-victim"},
		{v + "/files/a%2fb", victimOrigin, victimOrigin, "data of acct-victim"},
		{v + "/my%20file", victimOrigin, victimOrigin, "data of acct-victim"},
	} {
		res, body := rawRequest(t, "127.0.0.1:9420", "GET", tc.target, hdrs(hOrigin(tc.origin)))
		if res.StatusCode != 200 || body != tc.body || res.Header.Get("Access-Control-Allow-Origin") != tc.acao {
			t.Errorf("GET %s from %s: %d %q ACAO %q, want 200 %q ACAO %q", tc.target, tc.origin,
				res.StatusCode, body, res.Header.Get("Access-Control-Allow-Origin"), tc.body, tc.acao)
		}
	}
}

// adaptToJSON adapts a Caddyfile to a JSON config, to be extended with
// servers only JSON can express, and returns it with its servers.
func adaptToJSON(t *testing.T, caddyfile string) (cfg, servers map[string]any) {
	t.Helper()
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg, cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
}

// startSites starts this process's Caddy on the Caddyfile's sites, with
// the admin endpoint and bind address of the security tests.
func startSites(t *testing.T, sites string) {
	t.Helper()
	startCaddy(t, "caddyfile", secGlobals+sites)
}

// secGlobals are the global options of the security tests' Caddyfiles.
const secGlobals = "{\n\tadmin localhost:2994\n\tdefault_bind 127.0.0.1\n}\n"

// reflectingErrors is a handle_errors block that reflects the request's
// Origin with credentials, as a careless error page would.
const reflectingErrors = `
	handle_errors {
		header Access-Control-Allow-Origin {http.request.header.Origin}
		header Access-Control-Allow-Credentials true
		respond "error" 500
	}`

// TestSecurityErrorsBeforeTheModuleInAnyShape: an error raised before the
// module (an expression matcher on a query value that is not a number)
// reaches no client with an Access-Control-* header the module did not
// decide, wherever the module sits: inside a JSON subroute with error
// routes of its own, a named route run by invoke, handle_path, route,
// nested subroutes, beside a subroute with error routes of its own, and
// several modules with different prefixes in one server
// (docs/behaviour.md §4).
func TestSecurityErrorsBeforeTheModuleInAnyShape(t *testing.T) {
	upAddr := hostileUpstreamAddr(t)
	cf := secGlobals + fmt.Sprintf(`&(api) {
	route {
		atomsphere_cors {%[2]s
		}
		reverse_proxy %[1]s
	}
}
http://:9421 {
	@big expression `+"`int({query.page}) > 100`"+`
	header @big X-Big-Page 1
	invoke api
%[3]s
}
http://:9422 {
	@big expression `+"`int({query.page}) > 100`"+`
	header @big X-Big-Page 1
	handle_path /partner/* {
		atomsphere_cors {
			path_prefix /api/rest/v1/%[2]s
		}
		reverse_proxy %[1]s
	}
	handle {
		reverse_proxy %[1]s
	}
%[3]s
}
http://:9423 {
	@big expression `+"`int({query.page}) > 100`"+`
	header @big X-Big-Page 1
	header Access-Control-Allow-Origin "*"
	invoke api
}
http://:9424 {
	@big expression `+"`int({query.page}) > 100`"+`
	handle /a/* {
		header @big X-Big-Page 1
		atomsphere_cors {
			path_prefix /a/%[2]s
		}
		reverse_proxy %[1]s
	}
	handle /b/* {
		route {
			header @big X-Big-Page 1
			atomsphere_cors {
				path_prefix /b/%[2]s
			}
			reverse_proxy %[1]s
		}
	}
%[3]s
}`, upAddr, twoTenants, reflectingErrors)
	cfg, servers := adaptToJSON(t, cf)
	module := `{"handler": "atomsphere_cors", "accounts": {
		"acct-evil": [{"origin": "https://evil.example"}],
		"acct-victim": [{"origin": "https://victim.example"}]}}`
	big := `{"match": [{"expression": "int({http.request.uri.query.page}) > 100"}],
		"handle": [{"handler": "headers", "response": {"set": {"X-Big-Page": ["1"]}}}]}`
	proxy := `{"handler": "reverse_proxy", "upstreams": [{"dial": "` + upAddr + `"}]}`
	reflect := `{"handler": "headers", "response": {"set": {
		"Access-Control-Allow-Origin": ["{http.request.header.Origin}"],
		"Access-Control-Allow-Credentials": ["true"]}}}`
	for name, js := range map[string]string{
		// A subroute whose error routes proxy to the same upstream.
		"subroute-proxy": `{"listen": ["127.0.0.1:9425"], "routes": [{"handle": [{"handler": "subroute",
			"routes": [` + big + `, {"handle": [` + module + `]}, {"handle": [` + proxy + `]}],
			"errors": {"routes": [{"handle": [` + proxy + `]}]}}]}]}`,
		// A subroute whose error routes reflect the Origin.
		"subroute-headers": `{"listen": ["127.0.0.1:9426"], "routes": [{"handle": [{"handler": "subroute",
			"routes": [` + big + `, {"handle": [` + module + `]}, {"handle": [` + proxy + `]}],
			"errors": {"routes": [{"handle": [` + reflect + `,
				{"handler": "static_response", "status_code": 500, "body": "error"}]}]}}]}]}`,
		// Subroutes in subroutes, each with error routes; the error is
		// raised in the outer one, before the inner one runs.
		"nested": `{"listen": ["127.0.0.1:9427"], "routes": [{"handle": [{"handler": "subroute",
			"routes": [` + big + `, {"handle": [{"handler": "subroute",
				"routes": [` + big + `, {"handle": [` + module + `]}, {"handle": [` + proxy + `]}],
				"errors": {"routes": [{"handle": [` + proxy + `]}]}}]}],
			"errors": {"routes": [{"handle": [` + reflect + `,
				{"handler": "static_response", "status_code": 500, "body": "error"}]}]}}]}]}`,
		// A subroute beside the module, not around it, with error routes
		// of its own: the error is raised in it, before the module.
		"sibling-before": `{"listen": ["127.0.0.1:9428"], "routes": [
			{"handle": [{"handler": "subroute", "routes": [` + big + `],
				"errors": {"routes": [{"handle": [` + proxy + `]}]}}]},
			{"handle": [` + module + `, ` + proxy + `]}]}`,
		// The same, the subroute after the module.
		"sibling-after": `{"listen": ["127.0.0.1:9429"], "routes": [
			{"match": [{"method": ["PUT"]}], "handle": [` + module + `, ` + proxy + `]},
			{"handle": [{"handler": "subroute", "routes": [` + big + `],
				"errors": {"routes": [{"handle": [` + reflect + `,
					{"handler": "static_response", "status_code": 500, "body": "error"}]}]}}]},
			{"handle": [` + module + `, ` + proxy + `]}]}`,
		// A subroute before the module in the same handler list.
		"sibling-same-route": `{"listen": ["127.0.0.1:9417"], "routes": [{"handle": [
			{"handler": "subroute", "routes": [` + big + `], "errors": {"routes": [{"handle": [` + proxy + `]}]}},
			` + module + `, ` + proxy + `]}]}`,
		// A subroute in an earlier route of a subroute around the module.
		"sibling-inside": `{"listen": ["127.0.0.1:9416"], "routes": [{"handle": [{"handler": "subroute", "routes": [
			{"handle": [{"handler": "subroute", "routes": [` + big + `], "errors": {"routes": [{"handle": [` + proxy + `]}]}}]},
			{"handle": [` + module + `, ` + proxy + `]}]}]}]}`,
		// The subroute in a named route that invoke runs before the module.
		"sibling-named": `{"listen": ["127.0.0.1:9419"],
			"named_routes": {"side": {"handle": [{"handler": "subroute", "routes": [` + big + `],
				"errors": {"routes": [{"handle": [` + reflect + `,
					{"handler": "static_response", "status_code": 500, "body": "error"}]}]}}]}},
			"routes": [{"handle": [{"handler": "invoke", "name": "side"}]}, {"handle": [` + module + `, ` + proxy + `]}]}`,
	} {
		var srv map[string]any
		if err := json.Unmarshal([]byte(js), &srv); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		servers[name] = srv
	}
	startCaddy(t, "json", string(mustJSON(cfg)))

	const v = "/api/rest/v1/acct-victim/x?page=abc"
	for _, tc := range []struct {
		name, addr, target string
	}{
		{"module in a named route (invoke), handle_errors reflects the Origin", "127.0.0.1:9421", v},
		{"module in handle_path, handle_errors reflects the Origin", "127.0.0.1:9422", "/partner" + v},
		{"module in handle_path, a case-folded prefix", "127.0.0.1:9422", "/PARTNER/API/rest/v1/acct-victim/x?page=abc"},
		{"module in handle_path, an encoded slash", "127.0.0.1:9422", "/partner/api/rest/v1/acct-victim/..%2f?page=abc"},
		{"module in a named route, no error routes, a site-level header sets CORS", "127.0.0.1:9423", v},
		{"two modules, prefix /a/ in handle", "127.0.0.1:9424", "/a/acct-victim/x?page=abc"},
		{"two modules, prefix /b/ in route in handle", "127.0.0.1:9424", "/b/acct-victim/x?page=abc"},
		{"JSON subroute whose error routes proxy to a reflecting upstream", "127.0.0.1:9425", v},
		{"JSON subroute whose error routes reflect the Origin", "127.0.0.1:9426", v},
		{"nested JSON subroutes, the outer error routes reflect the Origin", "127.0.0.1:9427", v},
		{"JSON subroute, an encoded slash to the prefix", "127.0.0.1:9426", "/api/rest/v1/acct-victim/..%2f?page=abc"},
		{"JSON subroute, a long s in the prefix", "127.0.0.1:9426", "/api/re%C5%BFt/v1/acct-victim/x?page=abc"},
		{"JSON subroute beside the module, before it, proxies to a reflecting upstream", "127.0.0.1:9428", v},
		{"JSON subroute beside the module, after it, reflects the Origin", "127.0.0.1:9429", v},
		{"JSON subroute in a named route beside the module, reflects the Origin", "127.0.0.1:9419", v},
		{"JSON subroute before the module in the same handler list", "127.0.0.1:9417", v},
		{"JSON subroute in an earlier route of a subroute around the module", "127.0.0.1:9416", v},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := rawRequest(t, tc.addr, "GET", tc.target, hdrs(hOrigin(evilOrigin)))
			ac := corsHeaders(res.Header)
			delete(ac, "Vary")
			if len(ac) != 0 {
				t.Errorf("%d %q with Access-Control-* headers %v, want none", res.StatusCode, body, ac)
			}
			if !varyHasToken(res.Header, "Origin") {
				t.Errorf("Vary %q lacks Origin", res.Header["Vary"])
			}
		})
	}

	// Controls: without the error, each shape is the module's; outside
	// the account paths the error routes answer as they like.
	for _, tc := range []struct {
		name, addr, target, origin, acao string
		status                           int
	}{
		{"invoke, allowed", "127.0.0.1:9421", "/api/rest/v1/acct-victim/x?page=2", victimOrigin, victimOrigin, 200},
		{"invoke, denied", "127.0.0.1:9421", "/api/rest/v1/acct-victim/x?page=2", evilOrigin, "", 200},
		{"invoke, outside the account paths", "127.0.0.1:9421", "/static/x?page=abc", evilOrigin, evilOrigin, 500},
		{"handle_path, allowed", "127.0.0.1:9422", "/partner/api/rest/v1/acct-victim/x?page=2", victimOrigin, victimOrigin, 200},
		{"handle_path, outside the account paths", "127.0.0.1:9422", "/other/x?page=abc", evilOrigin, evilOrigin, 500},
		{"two modules, /b/ allowed", "127.0.0.1:9424", "/b/acct-victim/x?page=2", victimOrigin, victimOrigin, 200},
		{"subroute, allowed", "127.0.0.1:9426", "/api/rest/v1/acct-victim/x?page=2", victimOrigin, victimOrigin, 200},
		{"subroute, outside the account paths", "127.0.0.1:9426", "/static/x?page=abc", evilOrigin, evilOrigin, 500},
	} {
		t.Run("control: "+tc.name, func(t *testing.T) {
			res, body := rawRequest(t, tc.addr, "GET", tc.target, hdrs(hOrigin(tc.origin)))
			if res.StatusCode != tc.status || res.Header.Get("Access-Control-Allow-Origin") != tc.acao {
				t.Errorf("%d %q ACAO %q, want %d ACAO %q", res.StatusCode, body,
					res.Header.Get("Access-Control-Allow-Origin"), tc.status, tc.acao)
			}
		})
	}
}

// TestSecurityPHPFrontController: a PHP front controller (php_fastcgi)
// routes /index.php/api/rest/v1/<account>/... as the account's path, so
// the module acts on it: before this, the upstream's own CORS headers
// went out there. A rewrite to /index.php{uri} before the module keeps
// ordinary requests working, and the guard still reads the target as
// sent.
func TestSecurityPHPFrontController(t *testing.T) {
	upAddr := hostileUpstreamAddr(t)
	startSites(t, fmt.Sprintf(`http://:9415 {
	atomsphere_cors {%[1]s
	}
	reverse_proxy %[2]s
}
http://:9414 {
	rewrite * /index.php{uri}
	atomsphere_cors {%[1]s
	}
	reverse_proxy %[2]s
}`, twoTenants, upAddr))
	for _, tc := range []struct {
		addr, target, origin, acao string
		status                     int
	}{
		{"127.0.0.1:9415", "/index.php/api/rest/v1/acct-victim/x", evilOrigin, "", 200},
		{"127.0.0.1:9415", "/INDEX.PHP/api/rest/v1/acct-victim/x", evilOrigin, "", 200},
		{"127.0.0.1:9415", "/index.php/api/rest/v1/acct-victim/x", victimOrigin, victimOrigin, 200},
		{"127.0.0.1:9414", "/api/rest/v1/acct-evil/x", evilOrigin, evilOrigin, 200},
		{"127.0.0.1:9414", "/api/rest/v1/acct-victim/x", evilOrigin, "", 200},
		{"127.0.0.1:9414", "/api/rest/v1/acct-victim/..%2facct-evil/x", evilOrigin, "", 400},
	} {
		res, body := rawRequest(t, tc.addr, "GET", tc.target, hdrs(hOrigin(tc.origin)))
		if res.StatusCode != tc.status || res.Header.Get("Access-Control-Allow-Origin") != tc.acao {
			t.Errorf("%s GET %s from %s: %d %q ACAO %q, want %d ACAO %q", tc.addr, tc.target, tc.origin,
				res.StatusCode, body, res.Header.Get("Access-Control-Allow-Origin"), tc.status, tc.acao)
		}
		if !varyHasToken(res.Header, "Origin") {
			t.Errorf("%s GET %s: Vary %q lacks Origin", tc.addr, tc.target, res.Header["Vary"])
		}
	}
}
