package atomspherecors

import (
	"net/http"
	"testing"
)

func TestSmokeDemoConfig(t *testing.T) {
	startCaddy(t, "caddyfile", `{
	admin localhost:2990
}
http://localhost:9990 {
	atomsphere_cors {
		account a1 {
			origin https://mydomain.com GET
		}
	}
	respond "ok" 200
}`)
	res, _ := doRequest(t, "OPTIONS", "http://localhost:9990/api/rest/v1/a1/x", http.Header{"Origin": {"https://mydomain.com"}, "Access-Control-Request-Method": {"GET"}})
	if res.StatusCode != 204 || res.Header.Get("Access-Control-Allow-Origin") != "https://mydomain.com" {
		t.Fatalf("got %d %v", res.StatusCode, res.Header)
	}
}
