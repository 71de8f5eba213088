package browser

import (
	"net/http"
	"testing"

	"atomspherecors/internal/testkit"
)

// startCaddy, doRequest and corsHeaders: see testkit.
func startCaddy(t testing.TB, caddyfile string) {
	t.Helper()
	testkit.StartCaddy(t, "caddyfile", caddyfile)
}

func doRequest(t testing.TB, method, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	return testkit.Do(t, method, url, hdr)
}

func corsHeaders(h http.Header) http.Header { return testkit.CORSHeaders(h) }
