package testkit

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter
	_ "github.com/caddyserver/caddy/v2/modules/standard"      // respond, basic_auth, reverse_proxy, file_server...
)

// StartCaddy loads a config into this process's Caddy, as POST /load
// does, and stops Caddy when the test ends. adapter is "json" or
// "caddyfile". Each test file uses its own admin and HTTP ports (all on
// loopback), so test binaries run side by side do not collide.
func StartCaddy(t testing.TB, adapter, cfg string) {
	t.Helper()
	cfgJSON := []byte(cfg)
	if adapter != "json" {
		a := caddyconfig.GetAdapter(adapter)
		if a == nil {
			t.Fatalf("no config adapter %q", adapter)
		}
		var err error
		cfgJSON, _, err = a.Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
		if err != nil {
			t.Fatalf("adapting config: %v", err)
		}
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
}

// Client talks to the Caddy under test: no proxy, no redirects
// followed, bounded in time.
var Client = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: false, MaxIdleConnsPerHost: 16},
	Timeout:   10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// Do sends one request with the given headers (each value of a
// key becomes its own header line) and returns the response and body.
// A request whose connection closes before any response byte is sent
// again, at most twice, as browsers retry: Caddy's server swap during a
// config load can close a connection it has just accepted.
func Do(t testing.TB, method, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, vs := range hdr {
			for _, v := range vs {
				req.Header.Add(k, v)
			}
		}
		res, err := Client.Do(req)
		if err != nil && attempt < 3 && closedBeforeResponse(err) {
			t.Logf("%s %s: %v; sending again", method, url, err)
			continue
		}
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("%s %s: reading body: %v", method, url, err)
		}
		return res, string(body)
	}
}

// closedBeforeResponse reports whether a client error means the
// connection closed before any byte of a response arrived.
func closedBeforeResponse(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// CORSHeaders returns the Access-Control-* and Vary headers of h, the
// set docs/behaviour.md speaks of, for exact comparison.
func CORSHeaders(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		if k == "Vary" || strings.HasPrefix(strings.ToLower(k), "access-control-") {
			out[k] = v
		}
	}
	return out
}

// Until calls check every `every` until it returns nil or d has passed,
// and returns its last error: the bounded wait of tests that watch a
// server converge.
func Until(d, every time.Duration, check func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(every)
	}
}
