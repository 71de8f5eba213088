package atomspherecors

// Fuzz targets for the three places hostile input meets the module: the
// origin parser, the account extraction from a path, and the whole
// handler. Each checks its result against a reference written here from
// first principles (net/url, strings.ToLower, caddyhttp.CleanPath,
// x/net/idna), never against the module's own helpers. scripts/test runs
// every Fuzz* target for about 20 s after the tests; to run one longer:
//
//	go test -run '^$' -fuzz '^FuzzServeHTTP$' -fuzztime 10m .
//
// A failing input is written to testdata/fuzz/<FuzzName>/ and from then
// on replayed by every plain `go test` run: keep it as a regression case.

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/idna"

	"atomspherecors/internal/origin"
	"atomspherecors/internal/policy"
)

// originSeeds are inputs worth starting every origin-shaped fuzz
// argument from: valid origins in every spelling, and the tricks of the
// security table.
var originSeeds = []string{
	"https://mydomain.com",
	"HTTPS://MyDomain.COM",
	"https://mydomain.com:443",
	"http://mydomain.com:80",
	"http://localhost:8080",
	"https://app.example.org:8443",
	"https://mydomain.com.evil.com",
	"https://evilmydomain.com",
	"https://mydomain.co",
	"https://ydomain.com",
	"http://mydomain.com",
	"https://mydomain.com:8443",
	"null",
	"*",
	"https://*.mydomain.com",
	"https://mydomain.com.",
	"https://mydomain.com\u3002", // ideographic full stop: a dot after IDNA mapping
	"https://\u00ad",             // soft hyphen: nothing after IDNA mapping
	"https://mydom\u0430in.com",  // Cyrillic а
	"https://xn--mydomin-2ng.com",
	"https://b\u00fccher.example",
	"https://xn--bcher-kva.example",
	"https://\uff4d\uff59domain.com", // fullwidth m, y
	"https://user@mydomain.com",
	"https://mydomain.com@evil.com",
	"https://mydomain.com/",
	"https://mydomain.com/path",
	"https://mydomain.com?q",
	"https://mydomain.com#f",
	"https://mydomain.com:",
	"https://mydomain.com:0443",
	"https://mydomain.com:65536",
	"ftp://mydomain.com",
	"javascript://mydomain.com",
	"https:/mydomain.com",
	"//mydomain.com",
	"http://[::1]:8080",
	"http://[0:0:0:0:0:0:0:1]:8080",
	"http://[::ffff:1.2.3.4]",
	"http://[fe80::1%25eth0]",
	"http://127.0.0.1:8080",
	"https://mydomain.com, https://evil.com",
	"https://my domain.com",
	"https://mydomain.com\\evil.com",
	"https://my%64omain.com",
	"https://xn--a.com",
	"",
}

// ---- FuzzParseOrigin --------------------------------------------------

// canonicalOrigin is what a canonical origin looks like: a lower-case
// http(s) scheme, a host of lower-case LDH labels (underscores allowed)
// or a bracketed IPv6 literal, and an optional port without leading zero.
var canonicalOrigin = regexp.MustCompile(
	`^(https?)://([a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:]+\])(?::([1-9][0-9]{0,4}))?$`)

func FuzzParseOrigin(f *testing.F) {
	for _, s := range originSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := origin.Parse(s) // must not panic
		if err != nil {
			return
		}
		canon := o.String()

		// What was accepted has no path, query, fragment or user info,
		// and an http or https scheme (checked on the input itself).
		scheme, rest, ok := strings.Cut(s, "://")
		if !ok {
			t.Fatalf("origin.Parse(%q) accepted an input without ://", s)
		}
		if ls := strings.ToLower(scheme); ls != "http" && ls != "https" {
			t.Fatalf("origin.Parse(%q) accepted the scheme %q", s, scheme)
		}
		if i := strings.IndexAny(rest, "/?#@\\"); i >= 0 {
			t.Fatalf("origin.Parse(%q) accepted %q after the scheme (path, query, fragment or user info)", s, rest[i])
		}
		if s == "null" || strings.Contains(s, "*") {
			t.Fatalf("origin.Parse(%q) accepted a null or wildcard origin", s)
		}

		// The serialisation is canonical...
		m := canonicalOrigin.FindStringSubmatch(canon)
		if m == nil {
			t.Fatalf("origin.Parse(%q).String() = %q: not a canonical origin", s, canon)
		}
		host, port := m[2], m[3]
		if strings.HasSuffix(host, ".") || host == "" {
			t.Fatalf("origin.Parse(%q).String() = %q: empty host or trailing dot", s, canon)
		}
		if port != "" {
			n, _ := strconv.Atoi(port)
			if n > 65535 || (m[1] == "https" && n == 443) || (m[1] == "http" && n == 80) {
				t.Fatalf("origin.Parse(%q).String() = %q: port not canonical", s, canon)
			}
		}
		// ...and net/url reads it as a bare origin with the same parts.
		u, err := url.Parse(canon)
		if err != nil {
			t.Fatalf("url.Parse(%q) (from %q): %v", canon, s, err)
		}
		if u.Scheme != m[1] || u.Host != strings.TrimPrefix(canon, m[1]+"://") || u.User != nil ||
			u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			t.Fatalf("url.Parse(%q) = %#v: not a bare origin", canon, u)
		}
		// It parses to the same value, and serialising is idempotent.
		o2, err := origin.Parse(canon)
		if err != nil {
			t.Fatalf("origin.Parse(%q) accepted, but its canonical form %q is refused: %v", s, canon, err)
		}
		if o2 != o {
			t.Fatalf("origin.Parse(%q) = %+v, but origin.Parse(%q) = %+v", s, o, canon, o2)
		}
		if c2 := o2.String(); c2 != canon {
			t.Fatalf("String not idempotent: %q -> %q -> %q", s, canon, c2)
		}
		// Lower-casing the input never changes which origin it is for an
		// ASCII input: scheme and host are case-insensitive.
		if asciiOnly(s) {
			o3, err := origin.Parse(strings.ToLower(s))
			if err != nil || o3 != o {
				t.Fatalf("origin.Parse(%q) = %+v but its lower-case form gives %+v, %v", s, o, o3, err)
			}
		}
	})
}

// ---- FuzzAccountOf ----------------------------------------------------

// refAccountOf is the reference reading of a request path (docs/behaviour.md §1),
// written straight from what Caddy's path matchers do (MatchPath:
// strings.ToLower, then caddyhttp.CleanPath with slashes merged): the
// account is the path segment right after the first prefix that the
// lower-cased clean path starts with. Lower-casing keeps every "/" where
// it is, so the account is found by segment number in the clean path,
// whatever lower-casing did to byte lengths.
func refAccountOf(prefixes []string, p string) (string, bool) {
	clean := caddyhttp.CleanPath(p, true)
	if id, ok, found := refAccountAtStart(prefixes, clean); found {
		return id, ok
	}
	// A PHP front controller's PATH_INFO: the path after the first
	// segment that ends in ".php", in any case, with more path after it.
	segs := strings.Split(clean, "/")
	for k, seg := range segs[:len(segs)-1] {
		if strings.HasSuffix(strings.ToLower(seg), ".php") {
			id, ok, _ := refAccountAtStart(prefixes, "/"+strings.Join(segs[k+1:], "/"))
			return id, ok
		}
	}
	return "", false
}

// refAccountAtStart is the account of the cleaned path clean when it
// starts with a prefix, in any case; found is false when none matches.
func refAccountAtStart(prefixes []string, clean string) (id string, ok, found bool) {
	lower := strings.ToLower(clean)
	for _, pre := range prefixes {
		if !strings.HasPrefix(lower, strings.ToLower(pre)) {
			continue
		}
		n := strings.Count(pre, "/") // the account is segment n (0 is before the first /)
		segs := strings.Split(clean, "/")
		if len(segs) <= n || segs[n] == "" {
			return "", false, true
		}
		return segs[n], true, true
	}
	return "", false, false
}

var fuzzPrefixSets = [][]string{
	nil, // the defaults
	{"/api/rest/v1/", "/partner/api/rest/v1/"},
	{"/k/", "/Api/"}, // "k" has a non-ASCII upper case (U+212A KELVIN SIGN)
	{"/api/", "/"},   // every path is an account path, /api/ first (a later /api/ would never be used)
	{"/\u00e9t\u00e9/", "/a/b/"},
}

func FuzzAccountOf(f *testing.F) {
	for _, p := range []string{
		"/api/rest/v1/account-123456/Atom/3456",
		"/api/rest/v1/account-A/../account-B/Atom",
		"/api/rest/v1/account-A/./../account-B",
		"/api/rest/v1//account-B/Atom",
		"//api//rest//v1//account-B",
		"/api/rest/v1/",
		"/api/rest/v1",
		"/api/rest/v1/.",
		"/api/rest/v1/..",
		"/api/rest/v1/account-A/..",
		"/API/REST/V1/account-B/x",
		"/partner/api/rest/v1/account-B/x",
		"/partner/api/rest/v1/../../../api/rest/v1/account-B",
		"/ap\u0130/rest/v1/account-B/x", // İ lower-cases to i
		"/\u212a/account-B/x",           // Kelvin sign lower-cases to k
		"/\u00c9T\u00c9/account-B",
		"/\xff/api/rest/v1/a",
		"/api/rest/v1/account-A/..\x00/b",
		"api/rest/v1/account-A",
		"./api/rest/v1/account-A",
		"",
		"/",
		"*",
		"/api/rest/v1/account-A/.../x",
		"/api/rest/v1/...",
		"/static/app.js",
		"/api/rest/v1/account-A/index.php",
		"/index.php/api/rest/v1/account-A",
		"/api/rest/v1/account-A/x.",
		"/.well-known/x.json",
	} {
		for i := range fuzzPrefixSets {
			f.Add(uint8(i), p)
		}
	}
	indexes := make([]*policy.Index, len(fuzzPrefixSets))
	for i, ps := range fuzzPrefixSets {
		// AccountOf is Caddy's reading, the guard's or not: with the
		// guard off, a non-ASCII prefix is accepted.
		ix, err := newIndex(&Handler{PathPrefixes: ps, DisablePathGuard: true}, false, nil)
		if err != nil {
			f.Fatalf("prefixes %q: %v", ps, err)
		}
		indexes[i] = ix
	}
	f.Fuzz(func(t *testing.T, set uint8, p string) {
		i := int(set) % len(fuzzPrefixSets)
		prefixes := fuzzPrefixSets[i]
		if prefixes == nil {
			prefixes = policy.DefaultPathPrefixes
		}
		got, gotOK := indexes[i].AccountOf(p) // must not panic
		want, wantOK := refAccountOf(prefixes, p)
		if got != want || gotOK != wantOK {
			t.Fatalf("prefixes %q, path %q: accountOf = %q, %v; Caddy's reading (CleanPath, ToLower) = %q, %v",
				prefixes, p, got, gotOK, want, wantOK)
		}
	})
}

// ---- FuzzServeHTTP ----------------------------------------------------

// fuzzAccounts is the handler config of FuzzServeHTTP, and the source
// of its reference model.
var fuzzAccounts = map[string][]policy.Rule{
	"account-123456": {
		{Origin: "https://mydomain.com", Methods: []string{"GET", "POST", "DELETE"}},
		{Origin: "http://localhost:8080", Methods: []string{"GET"}},
		{Origin: "HTTPS://MyDomain.com:443", Methods: []string{"PUT"}}, // merges with the first
	},
	"account-987654": {
		{Origin: "https://app.example.org:8443"},
		{Origin: "https://b\u00fccher.example", Methods: []string{"patch"}},
		{Origin: "http://[::1]:8080", Methods: []string{"GET"}},
	},
	"ACCOUNT-123456": {{Origin: "https://other.example"}},
	"empty":          {},
}

// refModel is the reference: account -> normalised origin -> methods,
// built from fuzzAccounts with refNormaliseOrigin, not the module's parser.
type refModel map[string]map[string]map[string]bool

func newRefModel(t testing.TB, accounts map[string][]policy.Rule) refModel {
	m := refModel{}
	for id, rules := range accounts {
		m[id] = map[string]map[string]bool{}
		for _, r := range rules {
			o, ok := refNormaliseOrigin(r.Origin)
			if !ok {
				t.Fatalf("reference model: rule origin %q does not normalise", r.Origin)
			}
			methods := r.Methods
			if len(methods) == 0 {
				methods = []string{"GET", "POST", "DELETE"}
			}
			if m[id][o] == nil {
				m[id][o] = map[string]bool{}
			}
			for _, meth := range methods {
				m[id][o][strings.ToUpper(meth)] = true
			}
		}
	}
	return m
}

// allows is the reference decision for one request's account, Origin
// lines and method (docs/behaviour.md §1: one Origin line, exact origin match,
// HEAD as GET, methods compared case-sensitively).
func (m refModel) allows(account string, originLines []string, method string) bool {
	if len(originLines) != 1 {
		return false
	}
	o, ok := refNormaliseOrigin(originLines[0])
	if !ok {
		return false
	}
	methods := m[account][o]
	return methods[method] || (method == "HEAD" && methods["GET"])
}

// refNormaliseOrigin normalises an origin the way docs/behaviour.md §6 says,
// built on net/url, strings.ToLower and idna: scheme and host lower-cased,
// an international host in punycode, a default port dropped. It refuses
// null, wildcards, a path (even "/"), query, fragment, user info, a
// trailing dot, and anything URL-escaped or with spaces in the host.
func refNormaliseOrigin(s string) (string, bool) {
	if s == "" || s == "null" || strings.Contains(s, "*") {
		return "", false
	}
	_, rest, ok := strings.Cut(s, "://")
	if !ok || rest == "" || strings.ContainsAny(rest, "/?#@\\% \t") {
		return "", false
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Opaque != "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", false
	}
	host, port := u.Hostname(), u.Port()
	if host == "" || strings.HasSuffix(u.Host, ":") {
		return "", false
	}
	if strings.HasPrefix(u.Host, "[") {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() || a.Zone() != "" || a.Is4In6() {
			return "", false
		}
		host = "[" + a.String() + "]"
	} else {
		if strings.HasSuffix(host, ".") {
			return "", false
		}
		a, err := idna.Lookup.ToASCII(host)
		if err != nil || a == "" || strings.HasSuffix(a, ".") || strings.ContainsAny(a, ":[]") {
			return "", false
		}
		host = strings.ToLower(a)
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || port[0] == '0' || n < 1 || n > 65535 {
			return "", false
		}
		if (u.Scheme == "https" && n == 443) || (u.Scheme == "http" && n == 80) {
			port = ""
		}
	}
	if port == "" {
		return u.Scheme + "://" + host, true
	}
	return u.Scheme + "://" + host + ":" + port, true
}

// fuzzNext is the handler behind the module in FuzzServeHTTP: a hostile
// upstream that adds its own CORS headers, or fails.
type fuzzNext struct {
	mode   uint8
	called bool
}

func (n *fuzzNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.called = true
	switch n.mode % 4 {
	case 0: // answers ACAO: *
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Methods", "*")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("upstream"))
	case 1: // reflects the Origin, with credentials
		w.Header()["Access-Control-Allow-Origin"] = r.Header["Origin"]
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		_, _ = w.Write([]byte("upstream"))
	case 2: // fails before writing, with a CORS header already set
		// under a key that is not canonical, as a careless handler might
		w.Header()["access-control-allow-origin"] = []string{"*"}
		return caddyhttp.Error(http.StatusBadGateway, errors.New("upstream down"))
	case 3: // writes nothing
	}
	return nil
}

func fuzzLines(s string, n uint8) []string {
	n %= 4
	if n == 0 {
		return nil
	}
	lines := strings.SplitN(s, "\n", int(n))
	for len(lines) < int(n) {
		lines = append(lines, "")
	}
	return lines
}

func FuzzServeHTTP(f *testing.F) {
	paths := []string{
		"/api/rest/v1/account-123456/Atom/1",
		"/api/rest/v1/account-987654/x",
		"/API/REST/V1/account-123456/x",
		"/api/rest/v1/account-123456/../account-987654/x",
		"/api/rest/v1/ACCOUNT-123456/x",
		"/partner/api/rest/v1/empty/x",
		"/api/rest/v1/",
		"/elsewhere",
		"/ap\u0130/rest/v1/account-987654/x", // İ: Caddy's path matchers lower-case it to i
		// Targets the path guard refuses: a backend reads another account.
		"/api/rest/v1/account-987654/..;/account-123456/x",
		"/api/rest/v1/account-987654\\..\\account-123456",
	}
	methods := []string{"GET", "OPTIONS", "POST", "HEAD", "PUT", "PATCH", "DELETE", "get"}
	// Few seeds, so the baseline is quick in a 20 s run: every origin
	// once, as a preflight or a normal request on a rotating path, and
	// every path with the allowed origin, once and twice.
	for j, o := range originSeeds {
		p := paths[j%len(paths)]
		if j%2 == 0 {
			f.Add("OPTIONS", p, o, uint8(1), methods[j%len(methods)], uint8(1), "content-type", uint8(j))
		} else {
			f.Add(methods[j%len(methods)], p, o, uint8(1), "", uint8(0), "", uint8(j))
		}
	}
	f.Add("CONNECT", "/api/rest/v1/account-123456/ws", "https://evil.example", uint8(1), "", uint8(0), "", uint8(0))
	for i, p := range paths {
		f.Add("OPTIONS", p, "https://mydomain.com", uint8(1), "DELETE", uint8(1), "x-a, x-b", uint8(i))
		f.Add("GET", p, "https://mydomain.com\nhttps://mydomain.com", uint8(2), "GET", uint8(2), "", uint8(i))
	}

	h := &Handler{Accounts: fuzzAccounts}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	f.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		f.Fatal(err)
	}
	// Debug logging on, so every decision builds its log entry (which
	// must not panic either), written nowhere.
	h.setLogger(zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(io.Discard), zapcore.DebugLevel)))
	model := newRefModel(f, fuzzAccounts)
	prefixes := policy.DefaultPathPrefixes

	f.Fuzz(func(t *testing.T, method, path, originText string, nOrigin uint8,
		acrmText string, nACRM uint8, acrh string, mode uint8) {
		if method == "" {
			method = "GET"
		}
		// Go's servers hand a handler only paths that begin with "/" (the
		// origin-form of RFC 9112 §3.2.1, checked by url.ParseRequestURI;
		// HTTP/2's :path likewise), so the fuzzer's path is read as one.
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		r := &http.Request{
			Method:     method,
			URL:        &url.URL{Path: path},
			Proto:      "HTTP/1.1",
			ProtoMajor: 1,
			ProtoMinor: 1,
			Header:     http.Header{},
			Host:       "example.test",
		}
		origins := fuzzLines(originText, nOrigin)
		acrm := fuzzLines(acrmText, nACRM)
		if origins != nil {
			r.Header["Origin"] = origins
		}
		if acrm != nil {
			r.Header["Access-Control-Request-Method"] = acrm
		}
		if acrh != "" {
			r.Header["Access-Control-Request-Headers"] = []string{acrh}
		}
		repl := caddy.NewReplacer()
		r = r.WithContext(context.WithValue(context.Background(), caddy.ReplacerCtxKey, repl))

		rec := httptest.NewRecorder()
		next := &fuzzNext{mode: mode}
		err := h.ServeHTTP(rec, r, next) // must not panic
		res := rec.Result()
		hdr := res.Header

		account, isAccountPath := refAccountOf(prefixes, path)
		// The path guard (docs/behaviour.md §5) refuses, with 400 and
		// before any CORS decision, a target a common backend could read
		// as another account. Where one of the model's readings names
		// another account it must refuse; it may refuse only targets
		// with a byte such a reading acts on.
		var he caddyhttp.HandlerError
		guardRefused := errors.As(err, &he) && he.StatusCode == http.StatusBadRequest
		if refReadsOtherAccount(prefixes, path, account, isAccountPath) && !guardRefused {
			t.Fatalf("%s %q: a backend could read another account than %q, but the request was not refused (err %v)",
				method, path, account, err)
		}
		if guardRefused {
			if !mayBeReadDifferently(path) {
				t.Fatalf("%s %q: refused by the path guard, but no reading it checks can change this path", method, path)
			}
			if next.called {
				t.Fatalf("%s %q: refused by the path guard, but the next handler ran", method, path)
			}
			for k := range hdr {
				if strings.HasPrefix(strings.ToLower(k), "access-control-") {
					t.Fatalf("%s %q: refused by the path guard, but the response has %s", method, path, k)
				}
			}
			return
		}
		if !isAccountPath {
			// Not ours: untouched, no Vary, next ran (docs/behaviour.md §1).
			if !next.called {
				t.Fatalf("%s %q: not an account path, but next did not run", method, path)
			}
			if _, ok := hdr["Vary"]; ok {
				t.Fatalf("%s %q: not an account path, but Vary was set: %q", method, path, hdr["Vary"])
			}
			return
		}

		isPreflight := method == http.MethodOptions && len(origins) > 0 &&
			len(acrm) > 0 && !(len(acrm) == 1 && acrm[0] == "")
		var allowedByModel bool
		if isPreflight {
			allowedByModel = len(acrm) == 1 && model.allows(account, origins, acrm[0])
		} else {
			allowedByModel = model.allows(account, origins, method)
		}

		acao, hasACAO := hdr["Access-Control-Allow-Origin"]
		preflight2xx := isPreflight && err == nil && !next.called && res.StatusCode >= 200 && res.StatusCode < 300
		allowed := hasACAO || preflight2xx
		desc := func() string {
			return method + " " + strconv.Quote(path) + " Origin " + strconv.Quote(strings.Join(origins, "|")) +
				" ACRM " + strconv.Quote(strings.Join(acrm, "|")) + " (account " + strconv.Quote(account) + ")"
		}
		if allowed && !allowedByModel {
			t.Fatalf("%s: allowed (status %d, ACAO %q), but the config does not allow it", desc(), res.StatusCode, acao)
		}
		if hasACAO && (len(acao) != 1 || len(origins) != 1 || acao[0] != origins[0]) {
			t.Fatalf("%s: ACAO %q is not the request's Origin byte for byte", desc(), acao)
		}
		if allowed {
			// Only this module's own headers, under their canonical names.
			for k, v := range hdr {
				if strings.HasPrefix(strings.ToLower(k), "access-control-") && !moduleHeaders[k] {
					t.Fatalf("%s: allowed, but the response has %s: %q", desc(), k, v)
				}
			}
		} else {
			for k := range hdr {
				if strings.HasPrefix(strings.ToLower(k), "access-control-") {
					t.Fatalf("%s: denied, but the response has %s: %q", desc(), k, hdr[k])
				}
			}
		}
		// A browser's exact serialisation of an allowed origin is never
		// refused (the converse, on inputs where the model is exact).
		if allowedByModel && len(origins) == 1 && isCanonicalInModel(model, account, origins[0]) && !allowed {
			t.Fatalf("%s: the config allows it, but it was denied (status %d, err %v)", desc(), res.StatusCode, err)
		}
		// Every response of an account path varies with Origin (no
		// cache may serve one origin's answer to another).
		if !varyHasToken(hdr, "Origin") {
			t.Fatalf("%s: Vary %q lacks Origin", desc(), hdr["Vary"])
		}
		if isPreflight {
			if next.called {
				t.Fatalf("%s: a preflight reached the next handler", desc())
			}
			if !allowed {
				if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
					t.Fatalf("%s: denied preflight returned %v, want a 401 HandlerError", desc(), err)
				}
			}
		} else if method == http.MethodConnect && len(origins) > 0 && !allowed {
			// A denied protocol switch from a browser (docs/behaviour.md
			// §3): refused with 403, the next handler not run.
			if next.called || !errors.As(err, &he) || he.StatusCode != http.StatusForbidden {
				t.Fatalf("%s: a denied CONNECT with Origin returned %v (next ran: %v), want a 403 HandlerError", desc(), err, next.called)
			}
		} else if !next.called {
			t.Fatalf("%s: a normal request did not reach the next handler", desc())
		}
	})
}

// refReadsOtherAccount reports whether a backend reading p in one of
// the ways docs/behaviour.md §5 lists (backslash as "/", path parameters
// dropped, decoded once more) would name another account than Caddy's
// reading (account, ok). It is the model's own, simpler account of those
// readings: every one it finds, the module must find too.
func refReadsOtherAccount(prefixes []string, p, account string, ok bool) bool {
	readings := []string{strings.ReplaceAll(p, `\`, "/")}
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		segs[i], _, _ = strings.Cut(seg, ";")
	}
	readings = append(readings, strings.Join(segs, "/"))
	if twice, err := url.PathUnescape(p); err == nil {
		readings = append(readings, twice)
	}
	for _, q := range readings {
		if id, isAccount := refAccountOf(prefixes, q); isAccount != ok || id != account {
			return true
		}
	}
	// A router that does not resolve dot segments reads the segment after
	// the prefix, whatever it is.
	var segs2 []string
	for _, seg := range strings.Split(p, "/") {
		if seg != "" {
			segs2 = append(segs2, seg)
		}
	}
	for _, pre := range prefixes {
		preSegs := strings.Split(strings.Trim(strings.ToLower(pre), "/"), "/")
		if len(segs2) <= len(preSegs) || !slices.Equal(lowerAll(segs2[:len(preSegs)]), preSegs) {
			continue
		}
		return !ok || segs2[len(preSegs)] != account
	}
	return false
}

// lowerAll is each string of ss lower-cased.
func lowerAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}

// mayBeReadDifferently reports whether some backend reading that the
// path guard checks could change the decoded path p (docs/behaviour.md
// §5): it has a '%', ';', '\\', '#', '?', space, control character or
// byte that is not ASCII, or a segment ending in a dot.
func mayBeReadDifferently(p string) bool {
	if strings.ContainsAny(p, "%;\\#? \x7f") || !asciiOnly(p) {
		return true
	}
	for _, seg := range strings.Split(p, "/") {
		if strings.HasSuffix(seg, ".") {
			return true // "." and ".." too: raw-path routers read them as segments
		}
	}
	if strings.IndexFunc(p, func(r rune) bool { return r < ' ' }) >= 0 {
		return true
	}
	// A script and its PATH_INFO: a dotted segment with more path after it.
	segs := strings.Split(p, "/")
	for _, seg := range segs[:len(segs)-1] {
		if strings.Contains(seg, ".") {
			return true
		}
	}
	return false
}

// moduleHeaders are the Access-Control-* headers the module itself sets.
var moduleHeaders = map[string]bool{
	"Access-Control-Allow-Origin": true, "Access-Control-Allow-Credentials": true,
	"Access-Control-Allow-Methods": true, "Access-Control-Allow-Headers": true,
	"Access-Control-Max-Age": true, "Access-Control-Expose-Headers": true,
}

// isCanonicalInModel reports whether o is, byte for byte, an origin of
// the account in the model (the form a browser sends).
func isCanonicalInModel(m refModel, account, o string) bool {
	_, ok := m[account][o]
	return ok
}

// varyHasToken reports whether the Vary lines of h list token.
func varyHasToken(h http.Header, token string) bool {
	for _, line := range h["Vary"] {
		for _, v := range strings.Split(line, ",") {
			if strings.EqualFold(strings.TrimSpace(v), token) {
				return true
			}
		}
	}
	return false
}

// asciiOnly reports whether s has only ASCII bytes.
func asciiOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
