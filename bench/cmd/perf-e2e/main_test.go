package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"atomspherecors"
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
		var cfg caddyConfig
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

func TestParseFlagsParts(t *testing.T) {
	c, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.parts, []string{"throughput", "admin"}) || c.has("store") {
		t.Errorf("default parts %q", c.parts)
	}
	if c.starts != 3 || c.edits != 200 || c.inlineEdits != 5 || c.convergeEdits != 120 || c.idle != 20*time.Second ||
		c.huge != 0 || c.importLines != 100000 || c.timeout != time.Hour {
		t.Errorf("store defaults: %+v", c)
	}
	c, err = parseFlags([]string{"-parts", "store, throughput"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.parts, []string{"throughput", "store"}) {
		t.Errorf("-parts store,throughput: %q, want them in the order they run", c.parts)
	}
	c, err = parseFlags([]string{"-parts", "store", "-quick", "-edits", "7"})
	if err != nil {
		t.Fatal(err)
	}
	if c.big != 2000 || c.starts != 2 || c.edits != 7 || c.inlineEdits != 3 || c.convergeEdits != 30 || c.idle != 5*time.Second {
		t.Errorf("-quick -edits 7: %+v", c)
	}
	c, err = parseFlags([]string{"-huge", "1000000"})
	if err != nil {
		t.Fatal(err)
	}
	if c.timeout != 3*time.Hour {
		t.Errorf("-huge: timeout %v, want 3h", c.timeout)
	}
	if c, _ = parseFlags([]string{"-huge", "1000000", "-timeout", "2h"}); c.timeout != 2*time.Hour {
		t.Errorf("-huge -timeout 2h: timeout %v", c.timeout)
	}
	for _, bad := range [][]string{{"-parts", ""}, {"-parts", "store,nope"}, {"-starts", "0"}, {"-edits", "0"},
		{"-idle", "150ms"}, {"-idle", "0s"}, {"-huge", "5"}, {"-import-lines", "0"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestPercentile(t *testing.T) {
	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(100 - i) // 100 down to 1: percentile sorts
	}
	for _, c := range []struct{ p, want float64 }{{0, 1}, {50, 50.5}, {99, 99.01}, {100, 100}} {
		if got := percentile(xs, c.p); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("percentile(1..100, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentile([]float64{3, 1, 2}, 50); got != median([]float64{3, 1, 2}) {
		t.Errorf("p50 %v is not the median", got)
	}
	if got := percentile([]float64{7}, 99); got != 7 {
		t.Errorf("percentile of one value = %v", got)
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile of none = %v", got)
	}
}

func TestParseStatTicks(t *testing.T) {
	// the command may hold spaces and parentheses: fields count from the last ')'
	const stat = "4242 (caddy (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 37 0 0 20 0 12 0 8866 1500000000 20000 18446744073709551615\n"
	ticks, err := parseStatTicks(stat)
	if err != nil {
		t.Fatal(err)
	}
	if ticks != 287 {
		t.Errorf("utime+stime = %d, want 250+37", ticks)
	}
	if _, err := parseStatTicks("4242 (caddy) S 1 2"); err == nil {
		t.Error("a short line: no error")
	}
	if d, err := cpuTime(os.Getpid()); err != nil || d < 0 {
		t.Errorf("cpuTime(self) = %v, %v", d, err)
	}
}

func TestCountGCLines(t *testing.T) {
	const log = "gc 1 @0.012s 2%: 0.010+1.2+0.003 ms clock, 4->4->1 MB, 4 MB goal, 2 P\n" +
		`{"level":"info","msg":"gc of something"}` + "\n" +
		"gc 2 @0.540s 1%: 0.011+0.9+0.002 ms clock, 4->4->2 MB, 5 MB goal, 2 P\n" +
		"gc forced\n"
	if n := countGCLines([]byte(log)); n != 2 {
		t.Errorf("countGCLines = %d, want 2", n)
	}
}

func TestInlineSizes(t *testing.T) {
	for n, want := range map[int][]int{100000: {1000, 10000, 100000}, 10000: {1000, 10000}, 2000: {1000, 2000}, 500: {500}} {
		if got := inlineSizes(n); !reflect.DeepEqual(got, want) {
			t.Errorf("inlineSizes(%d) = %v, want %v", n, got, want)
		}
	}
}

// TestStoreConfigs checks the configs of part 4: loopback only, ports
// apart from parts 1 to 3's, and handlers the module's struct decodes
// strictly, the store's poll interval left out unless set.
func TestStoreConfigs(t *testing.T) {
	taken := map[string]bool{adminAddr: true, bigAddr: true}
	for _, v := range variants {
		taken[v.addr()] = true
	}
	for i := range storeAdmins {
		for _, a := range []string{storeAdmins[i], storeSites[i]} {
			if !strings.HasPrefix(a, "127.0.0.1:") || taken[a] {
				t.Errorf("address %s: not loopback, or used twice", a)
			}
			taken[a] = true
		}
	}
	for _, c := range []struct {
		handler map[string]any
		poll    time.Duration
		store   bool
	}{
		{storeHandler("/srv/cors", 0), 0, true},
		{storeHandler("/srv/cors", idlePoll), idlePoll, true},
		{inlineHandler(3), 0, false},
	} {
		raw, err := siteConfig(storeAdmins[1], storeSites[1], c.handler)
		if err != nil {
			t.Fatal(err)
		}
		var cfg caddyConfig
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		s := cfg.Apps.HTTP.Servers["s"]
		if cfg.Admin.Listen != storeAdmins[1] || !reflect.DeepEqual(s.Listen, []string{storeSites[1]}) {
			t.Errorf("admin %q, listen %q", cfg.Admin.Listen, s.Listen)
		}
		h := s.Routes[0].Handle[0]
		delete(h, "handler") // the route's loader takes it
		b, _ := json.Marshal(h)
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var mod atomspherecors.Handler
		if err := dec.Decode(&mod); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !c.store {
			if mod.Store != nil || len(mod.Accounts) != 3 {
				t.Errorf("inline handler: %s", b)
			}
			continue
		}
		if mod.Store == nil || mod.Store.Name != storeName || time.Duration(mod.Store.PollInterval) != c.poll ||
			string(mod.Store.StorageRaw) != `{"module":"file_system","root":"/srv/cors"}` || mod.Accounts != nil {
			t.Errorf("store handler: %s", b)
		}
		if c.poll == 0 && strings.Contains(string(b), "poll_interval") {
			t.Errorf("poll_interval set: %s", b)
		}
	}
}

// caddyConfig is the part of a generated Caddy JSON config the tests
// check: the admin address, each server's listeners and its handlers.
type caddyConfig struct {
	Admin struct {
		Listen string `json:"listen"`
	} `json:"admin"`
	Apps struct {
		HTTP struct {
			Servers map[string]struct {
				Listen []string `json:"listen"`
				Routes []struct {
					Handle []map[string]json.RawMessage `json:"handle"`
				} `json:"routes"`
			} `json:"servers"`
		} `json:"http"`
	} `json:"apps"`
}
