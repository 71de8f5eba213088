package main

import (
	"encoding/json"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the caddyfile adapter
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/headers" // the header directive
	"github.com/google/pprof/profile"
)

func TestParseFlagsQuick(t *testing.T) {
	c, err := parseFlags([]string{"-quick", "-rounds", "5"})
	if err != nil {
		t.Fatal(err)
	}
	if c.rounds != 5 || c.duration != time.Second || c.big != 2000 || c.profile != 5*time.Second {
		t.Errorf("-quick -rounds 5: got rounds %d, duration %v, big %d, profile %v", c.rounds, c.duration, c.big, c.profile)
	}
	c, err = parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.rounds != 9 || c.duration != 4*time.Second || c.big != 100000 || c.profile != 20*time.Second || c.connections != 32 {
		t.Errorf("defaults: %+v", c)
	}
	for _, bad := range [][]string{{"-duration", "1500ms"}, {"-rounds", "0"}, {"-big", "5"}, {"extra"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseWrk(t *testing.T) {
	const out = `Running 4s test @ http://127.0.0.1:9303/api/rest/v1/account-500/Atom/3456
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.41us  201.12us   4.12ms   80.11%
    Req/Sec    52.31k     1.20k   54.10k    70.00%
  208123 requests in 4.00s, 31.56MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  52030.75
Transfer/sec:      7.89MB
`
	res, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	want := wrkResult{rps: 52030.75, requests: 208123, non2xx: 7, socketErrors: 3}
	if res != want {
		t.Errorf("parseWrk = %+v, want %+v", res, want)
	}
	if _, err := parseWrk("unable to connect to 127.0.0.1:9303 Connection refused\n"); err == nil {
		t.Error("parseWrk of a failed run: no error")
	}
}

func TestMedianRatios(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
	if m := median(ratios([]float64{90, 80, 100}, []float64{100, 100, 100})); m != 0.9 {
		t.Errorf("median of ratios = %v", m)
	}
}

// TestConfigsLoopback adapts the Caddyfile of the comparison and checks
// that every site and the admin API listen on 127.0.0.1 only, as does the
// JSON config with many accounts.
func TestConfigsLoopback(t *testing.T) {
	raw, warns, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(sitesCaddyfile()), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warns {
		t.Logf("warning: %s", w.Message)
	}
	big, err := bigConfig(10)
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string][]byte{"Caddyfile": raw, "big": big} {
		var cfg struct {
			Admin struct {
				Listen string `json:"listen"`
			} `json:"admin"`
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						Listen []string `json:"listen"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.Admin.Listen != adminAddr {
			t.Errorf("%s: admin listens on %q", name, cfg.Admin.Listen)
		}
		n := 0
		for _, s := range cfg.Apps.HTTP.Servers {
			for _, l := range s.Listen {
				n++
				if !strings.HasPrefix(strings.TrimPrefix(l, "tcp/"), "127.0.0.1:") {
					t.Errorf("%s: a server listens on %q", name, l)
				}
			}
		}
		if want := map[string]int{"Caddyfile": len(variants), "big": 1}[name]; n != want {
			t.Errorf("%s: %d listeners, want %d", name, n, want)
		}
	}
	if !strings.Contains(string(raw), `"handler":"atomsphere_cors"`) {
		t.Error("the adapted Caddyfile has no atomsphere_cors handler")
	}
}

// TestProfileAnalysis runs the analysis on a profile built by hand.
func TestProfileAnalysis(t *testing.T) {
	fns := map[string]*profile.Function{}
	loc := func(names ...string) *profile.Location {
		l := &profile.Location{}
		for _, n := range names {
			if fns[n] == nil {
				fns[n] = &profile.Function{ID: uint64(len(fns) + 1), Name: n}
			}
			l.Line = append(l.Line, profile.Line{Function: fns[n]})
		}
		return l
	}
	sample := func(ms int64, stack ...string) *profile.Sample {
		s := &profile.Sample{Value: []int64{ms, ms * 1e6}}
		for _, n := range stack {
			s.Location = append(s.Location, loc(n))
		}
		return s
	}
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		Sample: []*profile.Sample{
			sample(10, "runtime.memmove", respondServe, moduleServe, "net/http.serve"),
			sample(3, "atomspherecors.(*index).match", moduleServe, "net/http.serve"),
			sample(87, "syscall.write", "net/http.serve"),
		},
	}
	own, respond, total, found := moduleShare(p)
	if own != 3*time.Millisecond || respond != 10*time.Millisecond || total != 100*time.Millisecond {
		t.Errorf("moduleShare = own %v, respond %v, total %v", own, respond, total)
	}
	if !found[moduleServe] || !found[respondServe] {
		t.Errorf("found = %v", found)
	}
	_, cum, found := cumulative(p, []string{moduleServe, "net/http.serve", "encoding/json.Marshal"})
	if cum[moduleServe] != 13*time.Millisecond || cum["net/http.serve"] != 100*time.Millisecond {
		t.Errorf("cum = %v", cum)
	}
	if found["encoding/json.Marshal"] {
		t.Error("a function in no sample is found")
	}
}

// TestBinaryFuncs reads the function names of this test's own binary.
func TestBinaryFuncs(t *testing.T) {
	names, err := binaryFuncs(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	self := runtime.FuncForPC(reflect.ValueOf(binaryFuncs).Pointer()).Name()
	for _, fn := range []string{self, "runtime.gcBgMarkWorker", "encoding/json.Marshal"} {
		if !names[fn] {
			t.Errorf("%s not found among %d functions", fn, len(names))
		}
	}
	if names["encoding/json.NoSuchFunction"] {
		t.Error("a function that does not exist is found")
	}
}
