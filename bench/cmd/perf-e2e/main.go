// Command perf-e2e measures atomsphere_cors end to end, in a Caddy built
// with the module and listening on loopback only:
//
//  1. requests/s of a site with the module in front of respond, against
//     the same site without CORS and against the hand-written Caddyfile
//     CORS snippet (header + @preflight matcher + respond 204, one block
//     per account), at 1 and 1000 accounts of 3 rules: wrk, rounds in
//     alternating order, medians of per-round ratios; and a CPU profile
//     under wrk giving the module's own share of Caddy's CPU;
//  2. `caddy start` with a config of -big accounts (100 000), and POST
//     /load of it into a running Caddy;
//  3. one admin-API edit of one account with -big accounts configured;
//
// with a CPU profile of 2 and 3 from the admin API's /debug/pprof naming
// where the time goes; and
//
//  4. the rules store (docs/store.md), its accounts in a file_system
//     storage in the work directory, edited through the admin routes
//     /atomsphere_cors/main/...:
//     a. POST /import of -big accounts into an empty store (time, Caddy's
//     CPU and peak RSS), the snapshot its Caddy writes as it stops; then
//     -starts rounds of `caddy start` with the accounts inline, from the
//     store without a snapshot, and from the store with a copy of the
//     snapshot: until start returns, until the last account's preflight
//     is allowed, and the RSS then (medians);
//     b. -edits sequential PUTs of random accounts at one server (p50,
//     p99, Caddy's CPU per edit), against -inline-edits PATCHes of one
//     inline account through /config/ (each a reload) at 1000, 10 000
//     and -big accounts;
//     c. three servers sharing the store with the default poll interval:
//     -converge-edits PUTs round-robin over them, each followed with
//     preflights on all three until all allow it (p50, p99, max, never);
//     d. idle servers polling every 100ms, with stores of 1000 and -big
//     accounts and without a store, CPU per poll over -idle;
//     e. with -huge N (skipped by default): the import of N accounts and
//     caddy start from the snapshot and without one.
//
// -parts selects the parts: throughput (1), admin (2 and 3), store (4);
// the default is throughput,admin. Only throughput needs wrk.
//
// Run it from the bench directory, or pass -repo (about 8 minutes with
// the defaults, plus the build of Caddy; -quick takes under two; -parts
// store about 6 minutes at 100 000 accounts on 2 CPUs, most of it the
// import, the convergence edits and the inline edits, about one with
// -quick; -huge 1000000 adds about half an hour, and sets -timeout to 3h
// unless given):
//
//	go run ./cmd/perf-e2e > e2e.txt
//	go run ./cmd/perf-e2e -caddy /tmp/caddy -quick   # build once, reuse
//	go run ./cmd/perf-e2e -caddy /tmp/caddy -parts store > store.txt
//	benchstat e2e.txt
//
// Standard output is in benchstat's format: one line per wrk run (req/s,
// and the ratio to the site without CORS and to the snippet taken within
// the same round, so that benchstat's median is the median of per-round
// ratios), per admin request (sec/op, rss-B) and per profiled step; for
// the store, one line per start and per import, and one per series of
// edits, per convergence run and per idle server with its percentiles
// (p50-sec/op, p99-sec/op, ...). The report for people goes to standard
// error, the store's ending with a summary of its figures.
//
// It exits 1 when a check fails (a site answers other than intended, the
// module's requests/s falls below -min-vs-none of the site without CORS
// or below -min-vs-snippet of the snippet at 1000 accounts, its own share
// of the CPU is above -max-module-cpu, `caddy start` or POST /load
// fails, an edit is not seen by the next request, or a function the
// report looks for is missing from a profile; the few that take too
// little CPU to be sampled at a small -big need only be in the caddy
// binary; for the store: an import, a PUT or a start fails, a server
// does not serve the store's accounts, no snapshot is written, an edit is
// not served by the server that took it on the next request, or by all
// three servers within 10 s), and 2 when it cannot measure (wrk missing
// for part 1, the build fails, a port is taken).
//
// Ports: 127.0.0.1:9301-9305 and 127.0.0.1:9310 for sites, 127.0.0.1:2993
// for the admin API; part 4: 127.0.0.1:2981-2984 for admin APIs and
// 127.0.0.1:9321-9324 for sites, one pair per Caddy running at once.
// They must be free. Each Caddy gets its own XDG_CONFIG_HOME and
// XDG_DATA_HOME in the work directory, and every process started is
// stopped by its pid.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Versions of what is built when no -caddy binary exists yet.
const (
	caddyVersion  = "v2.11.9"
	xcaddyPackage = "github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5"
	moduleID      = "http.handlers.atomsphere_cors"
)

type config struct {
	duration     time.Duration // each wrk run
	rounds       int
	connections  int
	big          int // accounts for caddy start, POST /load and the edit
	profile      time.Duration
	caddy        string
	work         string
	repo         string
	keep         bool
	quick        bool
	timeout      time.Duration
	minVsNone    float64
	minVsSnippet float64
	maxModuleCPU float64

	parts []string // in the order run: throughput, admin, store

	// part 4, the rules store
	starts        int           // repeats of each caddy start
	edits         int           // sequential PUTs at one server
	inlineEdits   int           // PATCHes of an inline config, per size
	convergeEdits int           // PUTs spread over the fleet of three
	idle          time.Duration // window of the idle polling cost
	huge          int           // accounts of the huge start; 0 skips it
	importLines   int           // lines per POST /import
}

// partNames are the parts -parts selects from, in the order they run.
var partNames = []string{"throughput", "admin", "store"}

// has reports whether part is selected.
func (c config) has(part string) bool { return slices.Contains(c.parts, part) }

// parseParts reads -parts: names of partNames separated by commas,
// returned in the order they run.
func parseParts(s string) ([]string, error) {
	want := map[string]bool{}
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(partNames, name) {
			return nil, fmt.Errorf("-parts %q: %q is not one of %s", s, name, strings.Join(partNames, ", "))
		}
		want[name] = true
	}
	var parts []string
	for _, name := range partNames {
		if want[name] {
			parts = append(parts, name)
		}
	}
	return parts, nil
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("perf-e2e", flag.ContinueOnError)
	fs.DurationVar(&c.duration, "duration", 4*time.Second, "length of each wrk run (whole seconds)")
	fs.IntVar(&c.rounds, "rounds", 9, "rounds of wrk runs, each variant once per round, in alternating order")
	fs.IntVar(&c.connections, "connections", 32, "wrk connections (one wrk thread)")
	fs.IntVar(&c.big, "big", 100000, "accounts for caddy start, POST /load and the edit")
	fs.DurationVar(&c.profile, "profile", 20*time.Second, "length of the CPU profiles of POST /load and of the edit (whole seconds)")
	fs.StringVar(&c.caddy, "caddy", "", "caddy binary with the module; built there with xcaddy when missing (default: built in the work directory)")
	fs.StringVar(&c.work, "work", "", "work directory, kept (default: a new temporary directory, removed at the end unless -keep)")
	fs.StringVar(&c.repo, "repo", "", "the atomspherecors checkout that is built (default: found above the current directory)")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary work directory (configs, logs, profiles)")
	fs.BoolVar(&c.quick, "quick", false, "a short run to see that everything works: -rounds 5 -duration 1s -big 2000 -profile 5s, and for the store -starts 2 -edits 50 -inline-edits 3 -converge-edits 30 -idle 5s, unless given")
	fs.DurationVar(&c.timeout, "timeout", time.Hour, "stop everything after this long (default 3h with -huge)")
	parts := fs.String("parts", "throughput,admin", "the parts to run, separated by commas: throughput (1), admin (2 and 3), store (4, the rules store; needs no wrk)")
	fs.IntVar(&c.starts, "starts", 3, "store: repeats of each caddy start (inline, store without and with a snapshot), medians reported")
	fs.IntVar(&c.edits, "edits", 200, "store: sequential PUTs of one account at the server that takes them")
	fs.IntVar(&c.inlineEdits, "inline-edits", 5, "store: admin-API PATCHes of one account of an inline config, at each of 1000, 10000 and -big accounts")
	fs.IntVar(&c.convergeEdits, "converge-edits", 120, "store: PUTs spread round-robin over three servers sharing the store, each followed until all three serve it")
	fs.DurationVar(&c.idle, "idle", 20*time.Second, "store: window over which idle servers' CPU is measured, polling every 100ms")
	fs.IntVar(&c.huge, "huge", 0, "store: accounts imported, then started from the snapshot and without one (0: skipped)")
	fs.IntVar(&c.importLines, "import-lines", 100000, "store: accounts per POST /import (Caddy's admin server reads a request body within 10 s, and the import validates each line as it reads)")
	// About 0.93 to 1.03 measured on a quiet machine; a module whose cost
	// grew with the number of accounts would be near the snippet's 0.05
	// to 0.1 at 1000. The floors leave room for a noisy, shared machine.
	fs.Float64Var(&c.minVsNone, "min-vs-none", 0.6, "check: the module's requests/s over the site without CORS, median of per-round ratios, at least this")
	fs.Float64Var(&c.minVsSnippet, "min-vs-snippet", 2, "check: the module's requests/s over the snippet's at 1000 accounts, at least this")
	fs.Float64Var(&c.maxModuleCPU, "max-module-cpu", 0.10, "check: the module's own share of Caddy's CPU under wrk (GET, 1000 accounts), at most this")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	if c.parts, err = parseParts(*parts); err != nil {
		return c, err
	}
	if c.huge > 0 && !set["timeout"] {
		c.timeout = 3 * time.Hour
	}
	if c.quick {
		if !set["rounds"] {
			c.rounds = 5
		}
		if !set["duration"] {
			c.duration = time.Second
		}
		if !set["big"] {
			c.big = 2000
		}
		if !set["profile"] {
			c.profile = 5 * time.Second
		}
		for name, v := range map[string]*int{"starts": &c.starts, "edits": &c.edits, "inline-edits": &c.inlineEdits, "converge-edits": &c.convergeEdits} {
			if !set[name] {
				*v = map[string]int{"starts": 2, "edits": 50, "inline-edits": 3, "converge-edits": 30}[name]
			}
		}
		if !set["idle"] {
			c.idle = 5 * time.Second
		}
	}
	switch {
	case c.duration < time.Second || c.duration%time.Second != 0:
		return c, fmt.Errorf("-duration %v: want whole seconds, at least 1s", c.duration)
	case c.profile < time.Second || c.profile%time.Second != 0:
		return c, fmt.Errorf("-profile %v: want whole seconds, at least 1s", c.profile)
	case c.rounds < 1 || c.rounds > 1000:
		return c, fmt.Errorf("-rounds %d: want 1 to 1000", c.rounds)
	case c.connections < 1 || c.connections > 10000:
		return c, fmt.Errorf("-connections %d: want 1 to 10000", c.connections)
	case c.big < 10:
		return c, fmt.Errorf("-big %d: want at least 10", c.big)
	case c.timeout <= 0:
		return c, fmt.Errorf("-timeout %v: want a positive duration", c.timeout)
	case c.starts < 1 || c.starts > 100:
		return c, fmt.Errorf("-starts %d: want 1 to 100", c.starts)
	case c.edits < 1 || c.edits > 100000:
		return c, fmt.Errorf("-edits %d: want 1 to 100000", c.edits)
	case c.inlineEdits < 1 || c.inlineEdits > 100:
		return c, fmt.Errorf("-inline-edits %d: want 1 to 100", c.inlineEdits)
	case c.convergeEdits < 1 || c.convergeEdits > 100000:
		return c, fmt.Errorf("-converge-edits %d: want 1 to 100000", c.convergeEdits)
	case c.idle < time.Second || c.idle%idlePoll != 0:
		return c, fmt.Errorf("-idle %v: want at least 1s, a multiple of %v", c.idle, idlePoll)
	case c.huge != 0 && c.huge < 10:
		return c, fmt.Errorf("-huge %d: want 0 (skip) or at least 10", c.huge)
	case c.importLines < 1:
		return c, fmt.Errorf("-import-lines %d: want at least 1", c.importLines)
	}
	return c, nil
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	cfg, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		say("perf-e2e: %v", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	r, err := newRunner(cfg)
	if err != nil {
		say("perf-e2e: %v", err)
		return 2
	}
	defer r.close()
	if err := r.all(ctx); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
		say("perf-e2e: %v", err)
		r.summary()
		return 2
	}
	if !r.summary() {
		return 1
	}
	return 0
}

// runner holds one run's settings, processes and check results.
type runner struct {
	cfg      config
	work     string
	removeWk bool // the work directory is a temporary one of ours
	caddy    string
	procs    []*proc
	// caddyFuncs are the functions of the caddy binary, read when needed
	caddyFuncs map[string]bool
	checks     []check
}

type check struct {
	name string
	ok   bool
	note string
}

func newRunner(cfg config) (*runner, error) {
	r := &runner{cfg: cfg}
	if _, err := lookPath("wrk"); err != nil && cfg.has("throughput") {
		return nil, errors.New("wrk is needed on PATH for -parts throughput (Debian: apt-get install wrk)")
	}
	if cfg.work != "" {
		if err := os.MkdirAll(cfg.work, 0o755); err != nil {
			return nil, err
		}
		r.work = cfg.work
	} else {
		dir, err := os.MkdirTemp("", "perf-e2e-")
		if err != nil {
			return nil, err
		}
		r.work, r.removeWk = dir, !cfg.keep
	}
	abs, err := filepath.Abs(r.work)
	if err != nil {
		return nil, err
	}
	r.work = abs
	return r, nil
}

// close stops every process still running and removes the temporary
// work directory.
func (r *runner) close() {
	for _, p := range r.procs {
		r.stop(p)
	}
	if r.removeWk {
		if err := os.RemoveAll(r.work); err != nil {
			say("perf-e2e: removing %s: %v", r.work, err)
		}
	} else {
		say("files in %s", r.work)
	}
}

// all runs the parts selected in turn.
func (r *runner) all(ctx context.Context) error {
	say("== machine")
	cpu := cpuModel()
	say("nproc: %d; cpu: %s; %s; load average: %s", runtime.NumCPU(), cpu, runtime.Version(), loadAverage())
	bench("goos: %s", runtime.GOOS)
	bench("goarch: %s", runtime.GOARCH)
	bench("cpu: %s", cpu)
	bench("caddy: %s", caddyVersion)

	if err := r.caddyBinary(ctx); err != nil {
		return err
	}
	for _, part := range r.cfg.parts {
		var err error
		switch part {
		case "throughput":
			err = r.throughput(ctx)
		case "admin":
			err = r.admin(ctx)
		case "store":
			err = r.store(ctx)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// checkf records a check and prints it.
func (r *runner) checkf(ok bool, name, format string, args ...any) {
	note := fmt.Sprintf(format, args...)
	r.checks = append(r.checks, check{name, ok, note})
	mark := "ok  "
	if !ok {
		mark = "FAIL"
	}
	say("%s %s: %s", mark, name, note)
}

// summary prints the failed checks and reports whether all passed.
func (r *runner) summary() bool {
	var failed []check
	for _, c := range r.checks {
		if !c.ok {
			failed = append(failed, c)
		}
	}
	say("== checks")
	if len(failed) == 0 {
		say("all %d checks passed", len(r.checks))
		return true
	}
	say("%d of %d checks failed:", len(failed), len(r.checks))
	for _, c := range failed {
		note, _, _ := strings.Cut(c.note, "\n")
		say("  FAIL %s: %s", c.name, note)
	}
	return false
}

// say prints a line of the report for people, on standard error.
func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// bench prints a line for benchstat, on standard output.
func bench(format string, args ...any) {
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// metric is one value of a benchmark line and its unit.
type metric struct {
	value float64
	unit  string
}

// result prints one benchmark line: one iteration and its metrics.
func result(name string, ms ...metric) {
	var sb strings.Builder
	sb.WriteString("Benchmark" + name + " 1")
	for _, m := range ms {
		fmt.Fprintf(&sb, " %.6g %s", m.value, m.unit)
	}
	bench("%s", sb.String())
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
