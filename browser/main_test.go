package browser

// Tests never write outside temporary directories: TestMain runs them
// with a temporary HOME (see internal/testkit).

import (
	"testing"

	"atomspherecors/internal/testkit"
)

func TestMain(m *testing.M) {
	testkit.Main(m, "atomspherecors-browser-test-home")
}

// A Caddy started by the tests keeps its config and data in TestMain's
// temporary HOME, and never saves its config to the user's autosave.json.
func TestCaddyStateStaysInTempHome(t *testing.T) {
	testkit.CheckSite(t, "127.0.0.1:9105", "http://localhost:9101")
}
