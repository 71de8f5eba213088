package bench

// Tests never write outside temporary directories. Caddy saves every
// config it loads to autosave.json in its config directory (unless
// persist_config off) and keeps its data (instance.uuid, locks,
// certificates) in its data directory, both found from HOME,
// XDG_CONFIG_HOME and XDG_DATA_HOME; see
// https://caddyserver.com/docs/conventions#file-locations. TestMain points
// all three at a fresh temporary directory before any test runs, and
// removes it when the tests are done.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

var (
	// testHome is the temporary HOME of this test binary.
	testHome string
	// userAutosave is the autosave.json of the user running the tests,
	// found from the environment as it was before TestMain changed it,
	// and userAutosaveBefore its state then.
	userAutosave       string
	userAutosaveBefore fileState
)

func TestMain(m *testing.M) {
	os.Exit(runInTempHome(m))
}

func runInTempHome(m *testing.M) int {
	userAutosave = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	userAutosaveBefore = stateOf(userAutosave)

	dir, err := os.MkdirTemp("", "atomspherecors-bench-test-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	testHome = dir
	for k, v := range map[string]string{
		"HOME":            dir,
		"XDG_CONFIG_HOME": filepath.Join(dir, "config"),
		"XDG_DATA_HOME":   filepath.Join(dir, "data"),
	} {
		if err := os.Setenv(k, v); err != nil {
			fmt.Fprintln(os.Stderr, "TestMain:", err)
			return 1
		}
	}
	// Caddy derived these two from the environment when its package was
	// initialised, before TestMain ran: derive them again, as the caddy
	// command does after reading an --envfile.
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	return m.Run()
}

// fileState is what the tests compare of a file that must not change.
type fileState struct {
	exists  bool
	modTime time.Time
	sum     [sha256.Size]byte
}

func stateOf(path string) fileState {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileState{}
	}
	st := fileState{exists: true, sum: sha256.Sum256(b)}
	if fi, err := os.Stat(path); err == nil {
		st.modTime = fi.ModTime()
	}
	return st
}

func (a fileState) String() string {
	if !a.exists {
		return "absent"
	}
	return fmt.Sprintf("modified %s, sha256 %x", a.modTime.Format(time.RFC3339Nano), a.sum[:8])
}

func (a fileState) same(b fileState) bool {
	return a.exists == b.exists && a.sum == b.sum && a.modTime.Equal(b.modTime)
}

// insideDir reports whether path is dir or below it.
func insideDir(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && filepath.IsAbs(path) && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// The Caddy that the benchmarks and tests run in keeps its config and
// data in TestMain's temporary HOME: the config it saved is there, and the
// user's own autosave.json is as it was before the tests started (or
// still absent).
func TestCaddyStateStaysInTempHome(t *testing.T) {
	loadModule(t)

	for name, path := range map[string]string{
		"caddy.AppConfigDir()":     caddy.AppConfigDir(),
		"caddy.AppDataDir()":       caddy.AppDataDir(),
		"caddy.ConfigAutosavePath": caddy.ConfigAutosavePath,
		"caddy.DefaultStorage":     caddy.DefaultStorage.Path,
	} {
		if !insideDir(testHome, path) {
			t.Errorf("%s = %s, want it inside the temporary HOME %s", name, path, testHome)
		}
	}

	// Caddy did save the config (so the check below is not vacuous), in
	// the temporary directory.
	saved, err := os.ReadFile(caddy.ConfigAutosavePath)
	if err != nil || !bytes.Contains(saved, []byte(`"discard"`)) {
		t.Errorf("autosave in the temporary HOME: %v, content %.200q; want the benchmarks' config", err, saved)
	}
	if after := stateOf(userAutosave); !after.same(userAutosaveBefore) {
		t.Errorf("the user's %s changed during the tests: before %s, after %s", userAutosave, userAutosaveBefore, after)
	}
}
