package atomspherecors

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard" // respond, basic_auth, reverse_proxy, file_server...
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"atomspherecors/internal/testkit"
)

// startCaddy, testClient, doRequest and corsHeaders: see testkit.
func startCaddy(t testing.TB, adapter, cfg string) { t.Helper(); testkit.StartCaddy(t, adapter, cfg) }

var testClient = testkit.Client

func doRequest(t testing.TB, method, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	return testkit.Do(t, method, url, hdr)
}

func corsHeaders(h http.Header) http.Header { return testkit.CORSHeaders(h) }

// rawRequest writes one HTTP/1.1 request by hand, request-target and
// header lines exactly as given, and reads the response.
func rawRequest(t testing.TB, addr, method, target string, lines [][2]string) (*http.Response, string) {
	t.Helper()
	return rawRequestBody(t, addr, method, target, lines, "")
}

// rawRequestBody is rawRequest with a request body (sent with its
// Content-Length when not empty).
func rawRequestBody(t testing.TB, addr, method, target string, lines [][2]string, body string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, addr)
	for _, l := range lines {
		fmt.Fprintf(&b, "%s: %s\r\n", l[0], l[1])
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("Connection: close\r\n\r\n")
	b.WriteString(body)
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, target, err)
	}
	return res, string(got)
}

// Values of the module's defaults, as a browser sees them.
const (
	wantAllowHeaders  = "cache-control,content-type,expires,last-modified,accept,content-language,authorization,pragma"
	wantVaryPreflight = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
)

// loadHandler loads a handler from its JSON config through Caddy's module
// loader (strict decoding, then Provision), as a config load does. It
// logs to core; nil is Caddy's default, info level, at which the
// handler's debug entries are checked and skipped.
func loadHandler(tb testing.TB, cfg string, core zapcore.Core) (*Handler, error) {
	tb.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	mod, err := ctx.LoadModuleByID("http.handlers.atomsphere_cors", json.RawMessage(cfg))
	if err != nil {
		return nil, err
	}
	h := mod.(*Handler)
	if core == nil {
		core = zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zapcore.InfoLevel)
	}
	// A context without a config gives a development logger (debug
	// level); use what a real config gives.
	h.setLogger(zap.New(core))
	return h, nil
}

// mustLoadHandler is loadHandler for a config that must load.
func mustLoadHandler(tb testing.TB, cfg string, core zapcore.Core) *Handler {
	tb.Helper()
	h, err := loadHandler(tb, cfg, core)
	if err != nil {
		tb.Fatalf("loading %.200s: %v", cfg, err)
	}
	return h
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// testWriter is a minimal ResponseWriter for driving ServeHTTP directly:
// its header map is reused between requests (reset clears it), so only
// the handler's own allocations count; the first status written stands.
// (httptest.ResponseRecorder copies the header map on WriteHeader.)
type testWriter struct {
	hdr    http.Header
	status int // 0: nothing written
	body   int
}

func newTestWriter() *testWriter { return &testWriter{hdr: http.Header{}} }

func (w *testWriter) Header() http.Header { return w.hdr }
func (w *testWriter) WriteHeader(s int) {
	if w.status == 0 {
		w.status = s
	}
}
func (w *testWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.body += len(b)
	return len(b), nil
}
func (w *testWriter) reset() {
	clear(w.hdr)
	w.status, w.body = 0, 0
}

// next200 stands for Caddy's respond handler after the module: a 200
// with no body.
var next200 caddyhttp.Handler = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(http.StatusOK)
	return nil
})

// adminClient opens a new connection for every call: Caddy replaces its
// admin server on each config change, and an edit (PUT, POST) must never
// be sent twice by a transport retry.
var adminClient = testkit.AdminClient

// adminCall sends one request to the admin API at base with a JSON body
// (nil for none) and returns the status and the response body.
func adminCall(t testing.TB, base, method, path string, body []byte) (int, string) {
	t.Helper()
	return testkit.Admin(t, base, method, path, "application/json", string(body))
}

// caddyBinary builds Caddy with this module (testdata/caddy) once per
// test binary, into the temporary HOME that TestMain removes, for the
// tests that run real Caddy processes.
func caddyBinary(t testing.TB) string {
	t.Helper()
	caddyBuild.once.Do(func() {
		dir, err := os.MkdirTemp(os.Getenv("HOME"), "caddy-bin-")
		if err != nil {
			caddyBuild.err = err
			return
		}
		bin := filepath.Join(dir, "caddy")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./testdata/caddy").CombinedOutput()
		if err != nil {
			caddyBuild.err = fmt.Errorf("go build ./testdata/caddy: %v\n%s", err, out)
			return
		}
		caddyBuild.bin = bin
	})
	if caddyBuild.err != nil {
		t.Fatal(caddyBuild.err)
	}
	return caddyBuild.bin
}

var caddyBuild struct {
	once sync.Once
	bin  string
	err  error
}
