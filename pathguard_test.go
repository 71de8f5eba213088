package atomspherecors

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
)

// parseTarget parses a request target as Go's HTTP server does, so that
// URL.Path and URL.RawPath are what the handler sees.
func parseTarget(t *testing.T, target string) *http.Request {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n")))
	if err != nil {
		t.Fatalf("%s: %v", target, err)
	}
	return r
}

// guardRefuses reports whether the path guard of a handler with the
// default prefixes refuses target, as ServeHTTP asks it.
func guardRefuses(t *testing.T, ix *index, target string) bool {
	r := parseTarget(t, target)
	id, ok := ix.accountOf(r.URL.Path)
	return guardedPath(r) && ix.ambiguous(r, id, ok)
}

// TestPathGuardReadings: every target below names one account for Caddy
// (its cleaned, decoded path) and another, or none, for a common backend
// (docs/behaviour.md §5); the guard refuses each. Browsers send all of
// them as written: only ".", "..", ".%2e", "%2e." and "%2e%2e" segments
// are dot segments that a browser resolves itself (WHATWG URL).
func TestPathGuardReadings(t *testing.T) {
	ix, err := newIndex(&Handler{})
	if err != nil {
		t.Fatal(err)
	}
	const v, e = "/api/rest/v1/acct-victim", "/api/rest/v1/acct-evil"
	for _, tc := range []struct{ name, target string }{
		// A raw-path router (Express) keeps %2f in the segment.
		{"encoded slash then dot-dot: Caddy evil, Express victim", v + "/..%2facct-evil/data"},
		{"encoded slash, upper case", v + "/..%2Facct-evil/data"},
		{"encoded slash to the prefix: Caddy no account, Express victim", v + "/..%2f"},
		{"encoded slashes climbing out of a deep path", v + "/x%2f..%2f..%2facct-evil"},
		{"encoded slashes climbing to the prefix", v + "/x%2f..%2f.."},
		{"encoded slash inside the account segment", "/api/rest/v1/acct-evil%2facct-victim/x"},
		{"encoded dots: Caddy resolves, a raw router does not", e + "/%2e%2e/acct-victim/x"},
		{"encoded dot-dot, mixed", e + "/.%2E/acct-victim/x"},
		// Trailing dots and spaces trimmed (Windows), whitespace trimmed.
		{"dot-dot and an encoded space", e + "/..%20/acct-victim/data"},
		{"dot-dot and an encoded tab", e + "/..%09/acct-victim/data"},
		{"three dots", e + "/.../acct-victim/data"},
		{"dot-dot and an encoded dot", e + "/..%2e/acct-victim/data"},
		{"leading space before dot-dot", e + "/%20../acct-victim/data"},
		{"account with a trailing dot", "/api/rest/v1/acct-victim./data"},
		{"account with a trailing space", "/api/rest/v1/acct-victim%20/data"},
		// NUL: truncated (C strings) or removed.
		{"dot-dot and NUL", e + "/..%00/acct-victim/data"},
		{"NUL then encoded slash and dot-dot", v + "%00%2f..%2facct-evil/data"},
		{"NUL inside the account", "/api/rest/v1/acct-victim%00x/data"},
		{"other control characters removed", e + "/.%01./acct-victim/data"},
		// Unicode compatibility forms (NFKC).
		{"fullwidth full stops", e + "/%ef%bc%8e%ef%bc%8e/acct-victim/data"},
		{"fullwidth solidus", v + "/..%ef%bc%8facct-evil/data"},
		{"fullwidth reverse solidus", e + "/..%ef%bc%bcacct-victim/data"},
		{"fullwidth letters in the prefix", "/api/%ef%bd%92est/v1/acct-victim/x"},
		// Decoded, then parsed again as a URL.
		{"encoded number sign", v + "%23/..%2facct-evil/data"},
		{"encoded question mark", v + "%3f/..%2facct-evil/data"},
		// Unicode case folding of the prefix.
		{"long s in the prefix", "/api/re%C5%BFt/v1/acct-victim/x"},
		{"dotless i in the prefix", "/ap%C4%B1/rest/v1/acct-victim/x"},
		// The readings that were there before.
		{"path parameters", e + "/..;/acct-victim/x"},
		{"encoded backslash", e + "/..%5cacct-victim/x"},
		{"double encoding", e + "/%252e%252e/acct-victim/x"},
		{"overlong UTF-8", e + "/%c0%ae%c0%ae/acct-victim/x"},
	} {
		if !guardRefuses(t, ix, tc.target) {
			t.Errorf("%s: %s passes the guard", tc.name, tc.target)
		}
	}
}

// TestPathGuardPasses: targets that every reading puts in the same
// account (or in none) pass the guard, so the guard does not refuse
// ordinary API paths.
func TestPathGuardPasses(t *testing.T) {
	ix, err := newIndex(&Handler{})
	if err != nil {
		t.Fatal(err)
	}
	const a = "/api/rest/v1/account-123456"
	for _, target := range []string{
		a + "/Atom",
		a + "/my%20file",
		a + "/a%2fb",
		a + "/a%2Fb/c",
		a + "/caf%C3%A9",
		a + "/v1.2/x",
		a + "/x;jsessionid=1",
		a + "/file.json",
		"/api/rest/v1/caf%C3%A9/x",
		"/api/rest/v1/ACCOUNT-1/x",
		"/API/Rest/v1/account-1/x",
		a + "/../account-987654/x", // a dot segment that browsers resolve themselves
		a + "/./x",
		"/api/rest/v1//account-1//x",
		"/static/%2e%2e;x/a%5cb",
		"/static/..%2f..%2fapi",
		"/docs/%ef%bc%8e",
		"/AP%C4%B0/rest/v1/account-1/x", // Caddy lower-cases "İ" to "i" too: the module acts on it
	} {
		if guardRefuses(t, ix, target) {
			t.Errorf("%s is refused", target)
		}
	}
}

// TestPathGuardKelvinSign: the Kelvin sign lower-cases to "k" (as Caddy's
// path matchers lower-case paths), so a prefix with a "k" spelled with it
// is the account path under Caddy's reading and every other: the module
// decides for that account, and the guard lets it through.
func TestPathGuardKelvinSign(t *testing.T) {
	ix, err := newIndex(&Handler{PathPrefixes: []string{"/bank/"}})
	if err != nil {
		t.Fatal(err)
	}
	const target = "/ban%E2%84%AA/acct-victim/x"
	if id, ok := ix.accountOf(parseTarget(t, target).URL.Path); !ok || id != "acct-victim" {
		t.Errorf("%s: account %q %v, want acct-victim", target, id, ok)
	}
	if guardRefuses(t, ix, target) {
		t.Errorf("%s is refused", target)
	}
}

// TestHasDotEndedSegment compares the scan with its definition on every
// path of up to seven bytes from "/", "." and "a".
func TestHasDotEndedSegment(t *testing.T) {
	plain := func(p string) bool {
		for _, seg := range strings.Split(p, "/") {
			if strings.HasSuffix(seg, ".") && seg != "." && seg != ".." {
				return true
			}
		}
		return false
	}
	var walk func(p string)
	walk = func(p string) {
		if got, want := hasDotEndedSegment(p), plain(p); got != want {
			t.Errorf("%q: %v, want %v", p, got, want)
		}
		if len(p) < 7 {
			for _, c := range []string{"/", ".", "a"} {
				walk(p + c)
			}
		}
	}
	walk("")
}
