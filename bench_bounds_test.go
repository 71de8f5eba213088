package atomspherecors

// Bounds: a request's work must not grow with hostile header sizes
// beyond reading them (docs/security.md, Bounds). Each case below is a hostile request
// shape at growing sizes; TestBounds checks the answer docs/behaviour.md gives
// at the largest size, and BenchmarkBounds times every size (its setup
// checks the answer too). No timing is asserted: compare ns/op across
// sizes, e.g.
//
//	go test -run '^$' -bench Bounds -benchmem .

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"atomspherecors/internal/policy"
)

// boundsAccounts: a small account (origins scanned) and a large one
// (origins in a map, more than mapThreshold).
func boundsAccounts() map[string][]policy.Rule {
	big := make([]policy.Rule, 0, 2*policy.MapThreshold)
	for i := range 2 * policy.MapThreshold {
		big = append(big, policy.Rule{Origin: "https://app" + strconv.Itoa(i) + ".example.com"})
	}
	big = append(big, policy.Rule{Origin: "https://mydomain.com"})
	return map[string][]policy.Rule{
		"account-123456": {
			{Origin: "https://mydomain.com", Methods: []string{"GET", "POST", "DELETE"}},
			{Origin: "http://localhost:8080", Methods: []string{"GET"}},
		},
		"account-big": big,
		"account-987654": {
			{Origin: "https://app.example.org:8443"},
		},
	}
}

// newBoundsHandler loads the handler of the bounds cases, logging to
// core (nil: info level, as in production).
func newBoundsHandler(tb testing.TB, core zapcore.Core) *Handler {
	tb.Helper()
	return mustLoadHandler(tb, string(mustJSON(map[string]any{"accounts": boundsAccounts()})), core)
}

// boundsOutcome is what one request through the handler gave.
type boundsOutcome struct {
	err        error
	status     int // 0: nothing written
	hdr        http.Header
	nextCalled bool
}

func boundsRequest(method, path string, hdr http.Header) *http.Request {
	r := &http.Request{Method: method, URL: &url.URL{Path: path}, Header: hdr,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Host: "example.test"}
	return r.WithContext(context.WithValue(context.Background(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
}

func serveBounds(h *Handler, r *http.Request) boundsOutcome {
	w := newTestWriter()
	var called bool
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		called = true
		return next200.ServeHTTP(w, r)
	})
	err := h.ServeHTTP(w, r, next)
	return boundsOutcome{err: err, status: w.status, hdr: w.hdr, nextCalled: called}
}

// Outcome checks, named by the sentences of docs/behaviour.md.

func bWantPreflightDenied(o boundsOutcome) error {
	var he caddyhttp.HandlerError
	switch {
	case !errors.As(o.err, &he) || he.StatusCode != http.StatusUnauthorized:
		return errors.New("want a 401 Caddy error, got " + strconv.Quote(bErrString(o.err)))
	case o.nextCalled:
		return errors.New("a preflight reached the next handler")
	case bHasACHeader(o.hdr):
		return errors.New("denied preflight carries Access-Control-* headers")
	case o.hdr.Get("Vary") != varyPreflight:
		return errors.New("Vary is " + strconv.Quote(o.hdr.Get("Vary")))
	}
	return nil
}

func bWantRefused(o boundsOutcome) error {
	var he caddyhttp.HandlerError
	switch {
	case !errors.As(o.err, &he) || he.StatusCode != http.StatusBadRequest:
		return errors.New("want the path guard's 400, got " + strconv.Quote(bErrString(o.err)))
	case o.nextCalled:
		return errors.New("a refused request reached the next handler")
	case bHasACHeader(o.hdr):
		return errors.New("a refused request carries Access-Control-* headers")
	}
	return nil
}

func bWantPreflightAllowed(origin string) func(boundsOutcome) error {
	return func(o boundsOutcome) error {
		switch {
		case o.err != nil || o.status != http.StatusNoContent:
			return errors.New("want 204, got " + strconv.Itoa(o.status) + " " + bErrString(o.err))
		case o.hdr.Get("Access-Control-Allow-Origin") != origin:
			return errors.New("Access-Control-Allow-Origin is " + strconv.Quote(o.hdr.Get("Access-Control-Allow-Origin")))
		case o.hdr.Get("Access-Control-Allow-Headers") != strings.Join(policy.DefaultAllowHeaders, ","):
			return errors.New("Access-Control-Allow-Headers is not the configured list: " +
				strconv.Quote(o.hdr.Get("Access-Control-Allow-Headers")))
		}
		return nil
	}
}

func bWantNormalDenied(o boundsOutcome) error {
	switch {
	case o.err != nil || !o.nextCalled || o.status != http.StatusOK:
		return errors.New("want next's 200, got " + strconv.Itoa(o.status) + " " + bErrString(o.err))
	case bHasACHeader(o.hdr):
		return errors.New("denied request carries Access-Control-* headers")
	case o.hdr.Get("Vary") != "Origin":
		return errors.New("Vary is " + strconv.Quote(o.hdr.Get("Vary")))
	}
	return nil
}

func bWantNormalAllowed(origin string) func(boundsOutcome) error {
	return func(o boundsOutcome) error {
		switch {
		case o.err != nil || !o.nextCalled || o.status != http.StatusOK:
			return errors.New("want next's 200, got " + strconv.Itoa(o.status) + " " + bErrString(o.err))
		case o.hdr.Get("Access-Control-Allow-Origin") != origin:
			return errors.New("Access-Control-Allow-Origin is " + strconv.Quote(o.hdr.Get("Access-Control-Allow-Origin")))
		}
		return nil
	}
}

func bHasACHeader(h http.Header) bool {
	for k := range h {
		if strings.HasPrefix(strings.ToLower(k), "access-control-") {
			return true
		}
	}
	return false
}

func bErrString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// boundsCase is one hostile request shape at a size n.
type boundsCase struct {
	name  string
	unit  string // what n counts
	sizes []int
	req   func(n int) *http.Request
	want  func(boundsOutcome) error
}

func bRepeatLines(v string, n int) []string {
	lines := make([]string, n)
	for i := range lines {
		lines[i] = v
	}
	return lines
}

// segmentsPath is an account-123456 path with n segments after the
// account.
func segmentsPath(n int) string {
	return "/api/rest/v1/account-123456/" + strings.Repeat("s/", n-1) + "Atom"
}

// dotSegmentsPath starts in account-987654, goes n-1 segments deep, then
// back out with dot-dot segments into account-123456: Caddy's reading
// (and the module's) is account-123456.
func dotSegmentsPath(n int) string {
	return "/api/rest/v1/account-123456/" + strings.Repeat("s/", n/2) + strings.Repeat("../", n/2) + "Atom"
}

var bKiB = 1 << 10

var boundsCases = []boundsCase{
	{
		// An Origin longer than any configured origin (its canonical
		// form at most 4 bytes a character, plus a port) is refused
		// before it is parsed: if it were parsed, this one (with a path)
		// would be "malformed", see TestBoundsLongOriginNotParsed.
		name: "LongOrigin/preflight", unit: "bytes", sizes: []int{64, bKiB, 64 * bKiB, 1024 * bKiB},
		req: func(n int) *http.Request {
			return boundsRequest("OPTIONS", "/api/rest/v1/account-123456/Atom", http.Header{
				"Origin":                        {longOrigin(n)},
				"Access-Control-Request-Method": {"GET"},
			})
		},
		want: bWantPreflightDenied,
	},
	{
		name: "LongOrigin/normal-large-account", unit: "bytes", sizes: []int{64, bKiB, 64 * bKiB, 1024 * bKiB},
		req: func(n int) *http.Request {
			return boundsRequest("GET", "/api/rest/v1/account-big/Atom", http.Header{"Origin": {longOrigin(n)}})
		},
		want: bWantNormalDenied,
	},
	{
		// Repeated Origin lines match no rule (docs/behaviour.md §1), whatever
		// their number.
		name: "OriginLines/preflight", unit: "lines", sizes: []int{2, 16, 256, 4096},
		req: func(n int) *http.Request {
			return boundsRequest("OPTIONS", "/api/rest/v1/account-123456/Atom", http.Header{
				"Origin":                        bRepeatLines("https://mydomain.com", n),
				"Access-Control-Request-Method": {"GET"},
			})
		},
		want: bWantPreflightDenied,
	},
	{
		name: "OriginLines/normal", unit: "lines", sizes: []int{2, 16, 256, 4096},
		req: func(n int) *http.Request {
			return boundsRequest("GET", "/api/rest/v1/account-123456/Atom",
				http.Header{"Origin": bRepeatLines("https://mydomain.com", n)})
		},
		want: bWantNormalDenied,
	},
	{
		// A browser sends one Access-Control-Request-Method; repeated
		// lines are refused without being read.
		name: "RequestMethodLines", unit: "lines", sizes: []int{2, 16, 256, 4096},
		req: func(n int) *http.Request {
			return boundsRequest("OPTIONS", "/api/rest/v1/account-123456/Atom", http.Header{
				"Origin":                        {"https://mydomain.com"},
				"Access-Control-Request-Method": bRepeatLines("GET", n),
			})
		},
		want: bWantPreflightDenied,
	},
	{
		// Access-Control-Request-Headers does not decide the outcome
		// (docs/behaviour.md §2): it is not read at all, the answer lists the
		// configured headers.
		name: "RequestHeaders", unit: "bytes", sizes: []int{bKiB, 16 * bKiB, 256 * bKiB, 1024 * bKiB},
		req: func(n int) *http.Request {
			return boundsRequest("OPTIONS", "/api/rest/v1/account-123456/Atom", http.Header{
				"Origin":                         {"https://mydomain.com"},
				"Access-Control-Request-Method":  {"DELETE"},
				"Access-Control-Request-Headers": {requestHeadersList(n)},
			})
		},
		want: bWantPreflightAllowed("https://mydomain.com"),
	},
	{
		// The account is read from the segment after the prefix; a clean
		// path is scanned once for dot segments and repeated slashes.
		name: "PathSegments/clean", unit: "segments", sizes: []int{10, 100, 1000, 10000},
		req: func(n int) *http.Request {
			return boundsRequest("GET", segmentsPath(n), http.Header{"Origin": {"https://mydomain.com"}})
		},
		want: bWantNormalAllowed("https://mydomain.com"),
	},
	{
		// Dot segments are resolved once, by caddyhttp.CleanPath, and
		// read once more by the path guard (they stay in the account).
		name: "PathSegments/dot-segments", unit: "segments", sizes: []int{10, 100, 1000, 10000},
		req: func(n int) *http.Request {
			return boundsRequest("OPTIONS", dotSegmentsPath(n), http.Header{
				"Origin":                        {"https://mydomain.com"},
				"Access-Control-Request-Method": {"DELETE"},
			})
		},
		want: bWantPreflightAllowed("https://mydomain.com"),
	},
}

// longOrigin is an Origin of n bytes that starts like the allowed one,
// in upper case so that only parsing could tell it is not allowed, and
// has a path.
func longOrigin(n int) string {
	const start = "HTTPS://MYDOMAIN.COM/"
	return start + strings.Repeat("A", max(n-len(start), 1))
}

// requestHeadersList is an Access-Control-Request-Headers value of about
// n bytes: a long list of header names.
func requestHeadersList(n int) string {
	var b strings.Builder
	b.Grow(n + 16)
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("x-h")
		b.WriteString(strconv.Itoa(i))
	}
	return b.String()
}

func TestBoundsAnswers(t *testing.T) {
	h := newBoundsHandler(t, nil)
	for _, c := range boundsCases {
		n := c.sizes[len(c.sizes)-1]
		t.Run(c.name+"/"+strconv.Itoa(n)+"-"+c.unit, func(t *testing.T) {
			if err := c.want(serveBounds(h, c.req(n))); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestBoundsTenThousandSegmentsToAnotherAccount: a 10 000-segment path
// whose dot segments climb into another account is refused by the path
// guard (a raw-path router reads the first account), in bounded work.
func TestBoundsTenThousandSegmentsToAnotherAccount(t *testing.T) {
	h := newBoundsHandler(t, nil)
	p := "/api/rest/v1/account-123456/" + strings.Repeat("s/", 5000) + strings.Repeat("../", 5001) +
		"account-987654/Atom"
	if n := strings.Count(p, "/"); n < 10000 {
		t.Fatalf("path has %d segments", n)
	}
	out := serveBounds(h, boundsRequest("OPTIONS", p, http.Header{
		"Origin": {"https://mydomain.com"}, "Access-Control-Request-Method": {"GET"}}))
	if err := bWantRefused(out); err != nil {
		t.Fatal(err)
	}
}

// TestBoundsLongOriginNotParsed shows the long Origin is refused before
// parsing: parsed, an Origin with a path would be logged as malformed.
func TestBoundsLongOriginNotParsed(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	h := newBoundsHandler(t, core)
	short := "HTTPS://MYDOMAIN.COM/X" // short enough to be parsed
	long := longOrigin(h.ix.MaxOriginLen() + 1)
	for _, tc := range []struct{ origin, reason string }{
		{short, "malformed Origin header"},
		{long, "origin not allowed"},
	} {
		logs.TakeAll()
		out := serveBounds(h, boundsRequest("OPTIONS", "/api/rest/v1/account-123456/Atom", http.Header{
			"Origin": {tc.origin}, "Access-Control-Request-Method": {"GET"}}))
		if err := bWantPreflightDenied(out); err != nil {
			t.Fatalf("Origin of %d bytes: %v", len(tc.origin), err)
		}
		entries := logs.TakeAll()
		if len(entries) != 1 {
			t.Fatalf("Origin of %d bytes: %d log entries, want 1", len(tc.origin), len(entries))
		}
		if got := entries[0].ContextMap()["reason"]; got != tc.reason {
			t.Errorf("Origin of %d bytes (limit %d): reason %q, want %q", len(tc.origin), h.ix.MaxOriginLen(), got, tc.reason)
		}
	}
}

func BenchmarkBounds(b *testing.B) {
	h := newBoundsHandler(b, nil)
	for _, c := range boundsCases {
		for _, n := range c.sizes {
			b.Run(c.name+"/"+strconv.Itoa(n)+"-"+c.unit, func(b *testing.B) {
				r := c.req(n)
				if err := c.want(serveBounds(h, r)); err != nil {
					b.Fatal(err)
				}
				w := newTestWriter()
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					w.reset()
					_ = h.ServeHTTP(w, r, next200)
				}
			})
		}
	}
}
