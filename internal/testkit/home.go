// Package testkit is what the tests of this module and of its nested
// test modules (browser/, bench/) share: a real Caddy started in the test
// process, requests to it, and a temporary HOME for it.
//
// Tests never write outside temporary directories. Caddy saves every config it loads to autosave.json in its
// config directory (unless persist_config off) and keeps its data
// (instance.uuid, locks, certificates) in its data directory, both found
// from HOME, XDG_CONFIG_HOME and XDG_DATA_HOME; see
// https://caddyserver.com/docs/conventions#file-locations. Run keeps a
// test binary's Caddy inside a temporary HOME.
package testkit

import (
	"bytes"
	"crypto/rand"
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

// Main is a TestMain: it runs the tests of m as Run does and exits with
// their code.
func Main(m *testing.M, prefix string) {
	os.Exit(Run(m, prefix))
}

// Run is a TestMain body: it runs the tests of m with HOME,
// XDG_CONFIG_HOME and XDG_DATA_HOME in a fresh temporary directory named
// after prefix, removed afterwards, and returns the exit code.
func Run(m *testing.M, prefix string) int {
	userAutosave = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	userAutosaveBefore = stateOf(userAutosave)

	dir, err := os.MkdirTemp("", prefix+"-")
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

// Check checks, once this test binary's Caddy has
// loaded a config containing marker, that Caddy's directories are inside
// the temporary HOME, that Caddy saved the config there (so the last check
// is not vacuous), and that the user's autosave.json does not hold it.
func Check(t *testing.T, marker string) {
	t.Helper()
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
	saved, err := os.ReadFile(caddy.ConfigAutosavePath)
	if err != nil || !bytes.Contains(saved, []byte(marker)) {
		t.Errorf("autosave in the temporary HOME: %v, content %.200q; want the config holding %s", err, saved, marker)
	}
	after := stateOf(userAutosave)
	if after.same(userAutosaveBefore) {
		return
	}
	if user, _ := os.ReadFile(userAutosave); bytes.Contains(user, []byte(marker)) {
		t.Errorf("the user's %s now holds this test's config (before the tests: %s, now: %s)", userAutosave, userAutosaveBefore, after)
		return
	}
	// Another Caddy of this user, a server or the tests of another
	// checkout, may save its own config meanwhile: not this test's doing.
	t.Logf("the user's %s changed during the tests (%s, then %s), but not to this test's config", userAutosave, userAutosaveBefore, after)
}

// CheckSite is the test that a Caddy this test binary starts keeps its
// config and data in Run's temporary HOME, and never saves its config to
// the user's autosave.json: it starts Caddy from a Caddyfile whose site
// on addr (a loopback host:port) has account acct-1 allow origin GET
// and answers with a random body, which makes the config unlike any
// other, requests the site, and Checks.
func CheckSite(t *testing.T, addr, origin string) {
	t.Helper()
	nonce := rand.Text()
	StartCaddy(t, "caddyfile", `{
	admin off
}

http://`+addr+` {
	bind 127.0.0.1
	atomsphere_cors {
		account acct-1 {
			origin `+origin+` GET
		}
	}
	respond "`+nonce+`" 200
}
`)
	res, body := Do(t, "GET", "http://"+addr+"/api/rest/v1/acct-1/Atom", nil)
	if res.StatusCode != 200 || body != nonce {
		t.Fatalf("the test site answered %d %q, want 200 %q", res.StatusCode, body, nonce)
	}
	Check(t, nonce)
}
