package testkit

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// AdminClient talks to Caddy's admin API in tests: no proxy, no kept
// connections (a test's Caddy stops with it), a bound on every call.
var AdminClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	Timeout:   30 * time.Second,
}

// Admin sends one request to the admin API at base (http://host:port)
// and returns the status and the body; a body, when given, is sent with
// contentType ("" for none).
func Admin(t testing.TB, base, method, path, contentType, body string) (int, string) {
	t.Helper()
	st, out, err := TryAdmin(base, method, path, contentType, body)
	if err != nil {
		t.Fatalf("admin %s %s: %v", method, path, err)
	}
	return st, out
}

// TryAdmin is Admin for a caller that handles the error itself (a
// server that may be down, a goroutine that cannot fail the test).
func TryAdmin(base, method, path, contentType, body string) (int, string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return 0, "", err
	}
	if body != "" && contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := AdminClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	return res.StatusCode, string(out), err
}

// ReadJSONLog reads a JSON log file, one entry a line: none when the
// file does not exist yet, and not a last line still being written (no
// newline after it). A complete line that is not JSON fails the test.
func ReadJSONLog(t testing.TB, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	var out []map[string]any
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e map[string]any
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("log %s: line %q: %v", path, line, err)
		}
		out = append(out, e)
	}
	return out
}
