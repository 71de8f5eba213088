package atomspherecors

// Tests never write outside temporary directories: TestMain runs them
// with a temporary HOME (see internal/testkit).

import (
	"crypto/rand"
	"os"
	"testing"

	"atomspherecors/internal/testkit"
)

func TestMain(m *testing.M) {
	os.Exit(testkit.Run(m, "atomspherecors-test-home"))
}

// A Caddy started by the tests keeps its config and data in TestMain's
// temporary HOME, and never saves its config to the user's autosave.json.
// A random response body makes this test's config unlike any other.
func TestCaddyStateStaysInTempHome(t *testing.T) {
	nonce := rand.Text()
	startCaddy(t, "caddyfile", `{
	admin off
}

http://127.0.0.1:9060 {
	bind 127.0.0.1
	atomsphere_cors {
		account acct-1 {
			origin https://app.example.com GET
		}
	}
	respond "`+nonce+`" 200
}
`)
	res, body := doRequest(t, "GET", "http://127.0.0.1:9060/api/rest/v1/acct-1/Atom", nil)
	if res.StatusCode != 200 || body != nonce {
		t.Fatalf("the test site answered %d %q, want 200 %q", res.StatusCode, body, nonce)
	}
	testkit.Check(t, nonce)
}
