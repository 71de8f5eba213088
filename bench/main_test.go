package bench

// Tests never write outside temporary directories: TestMain runs them
// with a temporary HOME (see internal/testkit).

import (
	"testing"

	"atomspherecors/internal/testkit"
)

func TestMain(m *testing.M) {
	testkit.Main(m, "atomspherecors-bench-test-home")
}

// The Caddy that the benchmarks and tests run in keeps its config and
// data in TestMain's temporary HOME, and never saves its config to the
// user's autosave.json.
func TestCaddyStateStaysInTempHome(t *testing.T) {
	loadModule(t)
	testkit.Check(t, `"output":"discard"`)
}
