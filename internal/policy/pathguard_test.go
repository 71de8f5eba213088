package policy

import (
	"bufio"
	"encoding/json"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
func guardRefuses(t *testing.T, ix *Index, target string) bool {
	r := parseTarget(t, target)
	id, ok := ix.AccountOf(r.URL.Path)
	return guardedPath(r) && ix.ambiguous(r, id, ok).Fired()
}

// TestPathGuardReadings: every target below names one account for Caddy
// (its cleaned, decoded path) and another, or none, for a common backend
// (docs/behaviour.md §5); the guard refuses each. Browsers send all of
// them as written: only ".", "..", ".%2e", "%2e." and "%2e%2e" segments
// are dot segments that a browser resolves itself (WHATWG URL).
func TestPathGuardReadings(t *testing.T) {
	ix, err := NewIndex(testConfig(Config{}))
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
		// Trimmed as Unicode white space, or invisible characters dropped.
		{"dot-dot and a line separator (JavaScript trim)", e + "/..%E2%80%A8/acct-victim/x"},
		{"dot-dot and a next-line (Go TrimSpace, Python strip)", e + "/..%C2%85/acct-victim/x"},
		{"dot-dot and an ogham space mark", e + "/..%E1%9A%80/acct-victim/x"},
		{"dot-dot and a paragraph separator", e + "/..%E2%80%A9/acct-victim/x"},
		{"dot-dot and a byte order mark", e + "/..%EF%BB%BF/acct-victim/x"},
		{"a line separator before dot-dot", e + "/%E2%80%A8../acct-victim/x"},
		{"a space and a line separator after dot-dot", e + "/..%20%E2%80%A8/acct-victim/x"},
		{"a line separator after the prefix", "/api/rest/v1%E2%80%A8/acct-victim/x"},
		{"a line separator inside the prefix", "/api%E2%80%A8/rest/v1/acct-victim/x"},
		{"a soft hyphen inside the prefix", "/ap%C2%ADi/rest/v1/acct-victim/x"},
		{"a zero-width space inside the prefix", "/api/re%E2%80%8Bst/v1/acct-victim/x"},
		{"dot-dot and a zero-width space", e + "/..%E2%80%8B/acct-victim/x"},
		{"dot-dot and a Latin-1 no-break space", e + "/..%a0/acct-victim/x"},
		{"dot-dot and a Latin-1 next-line", e + "/..%85/acct-victim/x"},
		{"a Latin-1 no-break space after the prefix", "/api/rest/v1%a0/acct-victim/x"},
		// Windows best fit to an ANSI code page.
		{"division slash", e + "/..%E2%88%95acct-victim/x"},
		{"set minus", e + "/..%E2%88%96acct-victim/x"},
		{"yen sign", e + "/..%C2%A5acct-victim/x"},
		{"won sign", e + "/..%E2%82%A9acct-victim/x"},
		// Dot segments that Caddy resolves and a raw-path router does not:
		// a browser never sends them, but Caddy's decoding of %2f makes
		// them in the target reverse_proxy forwards.
		{"dot-dot segment", e + "/../acct-victim/x"},
		{"single-dot segment before the account", "/api/rest/v1/./acct-victim/x"},
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
	ix, err := NewIndex(testConfig(Config{}))
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
		a + "/x/../y", // a dot segment that stays in the account
		a + "/./x",
		a + "/x%E2%80%A8y",
		a + "/%E2%82%AC/%F0%9F%98%80",
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
	ix, err := NewIndex(testConfig(Config{PathPrefixes: []string{"/bank/"}}))
	if err != nil {
		t.Fatal(err)
	}
	const target = "/ban%E2%84%AA/acct-victim/x"
	if id, ok := ix.AccountOf(parseTarget(t, target).URL.Path); !ok || id != "acct-victim" {
		t.Errorf("%s: account %q %v, want acct-victim", target, id, ok)
	}
	if guardRefuses(t, ix, target) {
		t.Errorf("%s is refused", target)
	}
}

// hasDotEndedSegment reports whether a segment of p ends in a dot: part of
// the plain definition TestScanPath checks the scan against.
func hasDotEndedSegment(p string) bool {
	return p != "" && p[len(p)-1] == '.' || strings.Contains(p, "./")
}

// TestPathGuardTargetAsSent: a raw "|" or "^" in the target is not a
// valid escaped path for Go, so the URL's escaped path is the decoded
// path escaped again, "%2f" become "/" (and reverse_proxy forwards a
// literal "../"); the guard reads the target as sent and as forwarded.
func TestPathGuardTargetAsSent(t *testing.T) {
	ix, err := NewIndex(testConfig(Config{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{
		"/api/rest/v1/acct-victim/..%2facct-evil/x|",
		"/api/rest/v1/acct-victim/..%2facct-evil/x^",
		"/api/rest/v1/acct-victim/%2e%2e%2facct-evil/x|",
		"/api/rest/v1/acct-victim/..%2facct-evil/|/x",
		"/partner/api/rest/v1/acct-victim/..%2facct-evil/x|",
		"/api/rest/v1/acct-victim/..%2f..%2f..%2fx|",
	} {
		r := parseTarget(t, target)
		if r.URL.EscapedPath() == target {
			t.Fatalf("%s: Go keeps the target as the escaped path; this test needs one it does not", target)
		}
		if !guardRefuses(t, ix, target) {
			t.Errorf("%s passes the guard (forwarded as %s)", target, r.URL.EscapedPath())
		}
	}
	if guardRefuses(t, ix, "/api/rest/v1/acct-victim/x|y") {
		t.Error("a raw | after the account is refused")
	}
}

// TestPathGuardFullCaseMapping: "ß" is "SS" upper-cased (Java, JavaScript)
// and "ss" case-folded (Python), so a prefix with "ss" can be spelled
// with it; the module reads no account there, so it is refused.
func TestPathGuardFullCaseMapping(t *testing.T) {
	ix, err := NewIndex(testConfig(Config{PathPrefixes: []string{"/class/"}}))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/cla%C3%9F/acct-victim/x", "/CLA%E1%BA%9E/acct-victim/x"} {
		if !guardRefuses(t, ix, target) {
			t.Errorf("%s passes the guard", target)
		}
	}
}

// TestPathGuardDecodedUntilItStops: a target encoded more times than the
// guard decodes is refused, not read as decoded so far.
func TestPathGuardDecodedUntilItStops(t *testing.T) {
	ix, err := NewIndex(testConfig(Config{PathGuard: true}))
	if err != nil {
		t.Fatal(err)
	}
	const e = "/api/rest/v1/acct-evil"
	for _, target := range []string{
		e + "/..%2525252facct-victim/x",
		e + "/%2525252e%2525252e/acct-victim/x",
		e + "/..%2525255cacct-victim/x",
		e + "/..%252525252525252525252fx",
	} {
		if !guardRefuses(t, ix, target) {
			t.Errorf("%s passes the guard", target)
		}
	}
	if !ix.MightOwn(parseTarget(t, "/ap%2525252569/rest/v1/acct-victim/x")) {
		t.Error("the error routes' check does not see the prefix in a target encoded four times")
	}
	if guardRefuses(t, ix, e+"/100%2525") {
		t.Error("a double-encoded percent sign after the account is refused")
	}
}

// TestPathGuardLettersInAccountIDs: account IDs with letters that a
// reading folds ("ß" to "ss", accents dropped, fullwidth letters) are
// served, since every reading names that same account; an ID that folds
// to another configured account's ID is refused.
func TestPathGuardLettersInAccountIDs(t *testing.T) {
	h := mustIndex(t, `{"accounts": {
		"straße": [{"origin": "https://a.example"}],
		"café": [{"origin": "https://a.example"}],
		"ｘ": [{"origin": "https://a.example"}],
		"ſtore": [{"origin": "https://a.example"}],
		"store": [{"origin": "https://b.example"}]}}`)
	for _, target := range []string{
		"/api/rest/v1/stra%C3%9Fe/x", "/api/rest/v1/caf%C3%A9/x", "/api/rest/v1/%EF%BD%98/x",
	} {
		if guardRefuses(t, h, target) {
			t.Errorf("%s is refused", target)
		}
	}
	if !guardRefuses(t, h, "/api/rest/v1/%C5%BFtore/x") {
		t.Error("ſtore passes the guard, though a folding backend reads the account store")
	}
	// Pairs whose folded IDs differ only in ASCII case from a configured
	// account (Go's strings.EqualFold, Java's equalsIgnoreCase and
	// case-insensitive collations read them as one).
	pairs := mustIndex(t, `{"accounts": {
		"store": [{"origin": "https://b.example"}], "strasse": [{"origin": "https://b.example"}],
		"cafe": [{"origin": "https://b.example"}], "file": [{"origin": "https://b.example"}],
		"id": [{"origin": "https://b.example"}],
		"ſTORE": [{"origin": "https://a.example"}], "STRAßE": [{"origin": "https://a.example"}],
		"ＳＴＯＲＥ": [{"origin": "https://a.example"}], "Café": [{"origin": "https://a.example"}],
		"ﬁLE": [{"origin": "https://a.example"}], "ıD": [{"origin": "https://a.example"}]}}`)
	for _, target := range []string{
		"/api/rest/v1/%C5%BFTORE/x", "/api/rest/v1/STRA%C3%9FE/x", "/api/rest/v1/%EF%BC%B3%EF%BC%B4%EF%BC%AF%EF%BC%B2%EF%BC%A5/x",
		"/api/rest/v1/Cafe%CC%81/x", "/api/rest/v1/Caf%C3%A9/x", "/api/rest/v1/%EF%AC%81LE/x", "/api/rest/v1/%C4%B1D/x",
	} {
		if !guardRefuses(t, pairs, target) {
			t.Errorf("%s passes the guard next to an account its folded ID names", target)
		}
	}
}

// TestPathGuardIDsThatFoldToOne: two configured IDs that a folding
// backend reads as one (NFC and NFD "café", the ligature "ﬆ" and the long
// s, upper and lower case) are refused; one alone is served.
func TestPathGuardIDsThatFoldToOne(t *testing.T) {
	h := mustIndex(t, `{"accounts": {
		"caf\u00e9": [{"origin": "https://a.example"}], "cafe\u0301": [{"origin": "https://b.example"}],
		"\ufb06ore": [{"origin": "https://a.example"}], "\u017ftore": [{"origin": "https://b.example"}],
		"stra\u00dfe": [{"origin": "https://a.example"}], "Strasse": [{"origin": "https://b.example"}],
		"\u00fcber": [{"origin": "https://a.example"}]}}`)
	for _, target := range []string{
		"/api/rest/v1/caf%C3%A9/x", "/api/rest/v1/cafe%CC%81/x", "/api/rest/v1/%EF%AC%86ore/x",
		"/api/rest/v1/%C5%BFtore/x", "/api/rest/v1/stra%C3%9Fe/x",
	} {
		if !guardRefuses(t, h, target) {
			t.Errorf("%s passes the guard, though another configured ID folds to the same", target)
		}
	}
	if guardRefuses(t, h, "/api/rest/v1/%C3%BCber/x") {
		t.Error("über, the only ID folding to uber, is refused")
	}
}

// TestAccountOfPHPFrontController: php_fastcgi serves /index.php/api/...
// with the path after the script as PATH_INFO, which PHP routers read:
// the module reads the account there too, so it acts on such paths.
func TestAccountOfPHPFrontController(t *testing.T) {
	ix, err := NewIndex(testConfig(Config{}))
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]string{
		"/index.php/api/rest/v1/acct-victim/x":        "acct-victim",
		"/INDEX.PHP/API/rest/v1/acct-victim/x":        "acct-victim",
		"/app/front.php/partner/api/rest/v1/acct-1/x": "acct-1",
		"/api/rest/v1/acct-1/index.php/x":             "acct-1",
	} {
		if id, ok := ix.AccountOf(target); !ok || id != want {
			t.Errorf("%s: account %q %v, want %q", target, id, ok, want)
		}
		if guardRefuses(t, ix, target) {
			t.Errorf("%s is refused", target)
		}
	}
	for _, target := range []string{"/index.php", "/index.php/static/x", "/x.phpx/api/rest/v1/a/x", "/static/app.js"} {
		if id, ok := ix.AccountOf(target); ok {
			t.Errorf("%s: account %q, want none", target, id)
		}
	}
	if !guardRefuses(t, ix, "/index.php%2fapi/rest/v1/acct-victim/x") {
		t.Error("an encoded slash after the script passes the guard")
	}
	// A script under one account's path whose PATH_INFO names another
	// account, with any extension a split list may name, or two scripts.
	for _, target := range []string{
		"/api/rest/v1/acct-evil/x.php/api/rest/v1/acct-victim/y",
		"/api/rest/v1/acct-evil/x.PHP/api/rest/v1/acct-victim/y",
		"/api/rest/v1/acct-evil/x%2ephp/api/rest/v1/acct-victim/y",
		"/api/rest/v1/acct-evil/x.ph%70/api/rest/v1/acct-victim/y",
		"/api/rest/v1/acct-evil/.php/api/rest/v1/acct-victim/y",
		"/api/rest/v1/acct-evil/x.phtml/api/rest/v1/acct-victim/y",
		"/x.phtml/api/rest/v1/acct-victim/x",
		"/a.php/b.php/api/rest/v1/acct-victim/x",
	} {
		if !guardRefuses(t, ix, target) {
			t.Errorf("%s passes the guard", target)
		}
	}
}

// TestPathGuardCombiningMarks: a prefix spelled with a combining accent
// is the prefix for a backend that strips accents.
func TestPathGuardCombiningMarks(t *testing.T) {
	ix, err := NewIndex(testConfig(Config{PathPrefixes: []string{"/kunde/"}}))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/ku%CC%88nde/acct-victim/x", "/kunde%CC%81/acct-victim/x"} {
		if !guardRefuses(t, ix, target) {
			t.Errorf("%s passes the guard", target)
		}
	}
}

// TestScanPath compares the path guard's eight-bytes-at-a-time scan with
// its plain definition, on every position of short paths and on
// pseudo-random ones.
func TestScanPath(t *testing.T) {
	plain := func(p string) bool {
		if strings.ContainsAny(p, "%;\\#?\x7f") || strings.IndexFunc(p, func(r rune) bool { return r <= ' ' || r >= 0x80 }) >= 0 {
			return true
		}
		i := strings.IndexByte(p, '.')
		return i >= 0 && (i == len(p)-1 || strings.IndexByte(p[i:], '/') >= 0 || hasDotEndedSegment(p))
	}
	base := "/api/rest/v1/account-123456/Atom/3456"
	for i := 0; i <= len(base); i++ {
		for _, c := range []string{"%", ";", "\\", "#", "?", " ", "\t", "\x1f", "\x7f", "\xc0", "\xff", "é", "a", "$", "!", "\x00", "@", "~",
			".", "./", "..", ".php/", ".PhP/", ".php", ".phpx/", "x."} {
			p := base[:i] + c + base[i:]
			if got, want := scanPath(p), plain(p); got != want {
				t.Errorf("%q: %v, want %v", p, got, want)
			}
		}
	}
	seed := uint64(1)
	alphabet := "/.aphP%;x#9\x80"
	for range 20000 {
		b := make([]byte, int(seed%40))
		for j := range b {
			seed = seed*6364136223846793005 + 1442695040888963407
			if seed>>63 == 0 {
				b[j] = alphabet[int(seed>>40)%len(alphabet)]
			} else {
				b[j] = byte(seed >> 56)
			}
		}
		if got, want := scanPath(string(b)), plain(string(b)); got != want {
			t.Fatalf("%q: %v, want %v", b, got, want)
		}
	}
}

// mustIndex builds the index of a config's JSON ({"accounts": {...}}).
func mustIndex(t *testing.T, config string) *Index {
	t.Helper()
	var c Config
	if err := json.Unmarshal([]byte(config), &c); err != nil {
		t.Fatal(err)
	}
	c.PathGuard = true
	ix, err := NewIndex(testConfig(c))
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// testConfig is c with the server's readings a handler gives an index:
// Caddy's path cleaning and its original request.
func testConfig(c Config) Config {
	c.CleanPath = func(p string) string { return caddyhttp.CleanPath(p, true) }
	c.OriginalRequest = func(r *http.Request) (http.Request, bool) {
		orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
		return orig, ok
	}
	return c
}

// A path guard refusal names the reading that fired, the first of the
// guard's checks under which the target names another account, so that
// an operator can tell why a request got 400.
func TestPathGuardNamesTheReading(t *testing.T) {
	ix, err := NewIndex(testConfig(Config{PathGuard: true}))
	if err != nil {
		t.Fatal(err)
	}
	const v = "/api/rest/v1/acct-victim"
	for _, tc := range []struct{ target, want string }{
		{v + "/..%2facct-evil/data", readingRawSegments},
		{v + "/..;/acct-evil/data", "path parameters stripped, then decoded (Tomcat and other servlet containers)"},
		{v + "/x%5c..%5c..%5cacct-evil/x", "backslash read as a separator"},
		{v + "/x/%252e%252e/%252e%252e/acct-evil/x", "decoded twice"},
		{v + "/x/%c0%ae%c0%ae/%c0%ae%c0%ae/acct-evil/x", "overlong UTF-8 read as ASCII"},
		{"/api/rest/v1/acct-victim./data", "segments trimmed of spaces and trailing dots (Windows)"},
		{v + "/x/index.php/../acct-evil", ""},
		{v + "/data", ""},
	} {
		r := parseTarget(t, tc.target)
		r.Header.Set("Origin", "https://a.example")
		d := ix.Decide(r)
		if d.Reading.String() != tc.want || (tc.want != "") != (d.Reason == AmbiguousPath) {
			t.Errorf("%s: %v, reading %q; want reading %q", tc.target, d.Reason, d.Reading, tc.want)
		}
	}
}

// Each reading has its own name, and whether it folds letters is said by
// the reading itself, not by its place in the table: the exemption for
// folded letters (sameLetters) goes with the readings that fold them.
func TestGuardReadingsTable(t *testing.T) {
	seen := map[string]bool{readingRawSegments: true, readingUnending: true, readingScript: true}
	var folding []string
	for _, g := range guardReadings {
		if g.name == "" || seen[g.name] {
			t.Errorf("reading %q: empty or named twice", g.name)
		}
		seen[g.name] = true
		if g.foldsLetters {
			folding = append(folding, g.name)
		}
	}
	want := []string{"Unicode compatibility forms (NFKC)", "Unicode case folding (Java's equalsIgnoreCase)",
		"accents and other combining marks dropped", "every reading at once, decoded until nothing changes"}
	if strings.Join(folding, "|") != strings.Join(want, "|") {
		t.Errorf("readings that fold letters: %q, want %q", folding, want)
	}
	if !strings.Contains(readingUnending, "8 rounds") || maxDecodes != 8 {
		t.Errorf("readingUnending %q says another count than maxDecodes %d", readingUnending, maxDecodes)
	}
	// Each reading that folds letters changes a letter that the others
	// keep: "ſ" (long s) under case folding, "ﬁ" under NFKC, a combining
	// mark under mark stripping.
	for _, tc := range []struct{ in, reading, want string }{
		{"/a/\u017f", "Unicode case folding (Java's equalsIgnoreCase)", "/a/s"},
		{"/a/\ufb01", "Unicode compatibility forms (NFKC)", "/a/fi"},
		{"/a/e\u0301", "accents and other combining marks dropped", "/a/e"},
	} {
		rs, _ := readings(tc.in)
		for i, g := range guardReadings {
			if g.name == tc.reading && rs[i] != tc.want {
				t.Errorf("%s of %q = %q, want %q", g.name, tc.in, rs[i], tc.want)
			}
		}
	}
}
