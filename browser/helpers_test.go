package browser

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
	_ "github.com/caddyserver/caddy/v2/modules/standard"      // basic_auth, reverse_proxy, file_server...
)

// startCaddy adapts a Caddyfile, loads it into this process's Caddy, as
// POST /load does, and stops Caddy when the test ends.
func startCaddy(t testing.TB, caddyfile string) {
	t.Helper()
	cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting config: %v", err)
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
}

// testClient talks to the Caddy under test: no proxy, no redirects
// followed, bounded in time.
var testClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16},
	Timeout:   10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// doRequest sends one request without a browser and returns the response
// and body. A request whose connection closes before any response byte
// is sent again, at most twice, as browsers retry: Caddy's server swap
// during a config load can close a connection it has just accepted.
func doRequest(t testing.TB, method, url string, hdr http.Header) (*http.Response, string) {
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
		res, err := testClient.Do(req)
		if err != nil && attempt < 3 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) {
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

// corsHeaders returns the Access-Control-* and Vary headers of h.
func corsHeaders(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		if k == "Vary" || strings.HasPrefix(strings.ToLower(k), "access-control-") {
			out[k] = v
		}
	}
	return out
}
