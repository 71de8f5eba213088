package main

import (
	"bytes"
	"context"
	"debug/elf"
	"debug/gosym"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// Functions the reports look for, by their full names in a profile. A
// name not found fails a check: it was renamed, and the report would
// otherwise print a zero.
const (
	caddyPkg      = "github.com/caddyserver/caddy/v2."
	moduleServe   = "atomspherecors.(*Handler).ServeHTTP"
	modulePrefix  = "atomspherecors."
	respondServe  = "github.com/caddyserver/caddy/v2/modules/caddyhttp.StaticResponse.ServeHTTP"
	profileMargin = time.Second
)

// step is one place where an admin request's CPU time goes.
type step struct {
	key   string // in benchmark names
	fn    string // full function name
	label string
	// sparse: the step takes so little CPU at a small -big that a
	// profile may hold no sample of it. Missing from the profile, it must
	// still be a function of the caddy binary, or it was renamed.
	sparse bool
}

// adminSteps are the steps of a config change through the admin API,
// indented as they nest.
var adminSteps = []step{
	{"change", caddyPkg + "changeConfig", "admin config change, in all", false},
	{"decode-body", caddyPkg + "unsyncedConfigAccess", "  decode the request body into a generic map and edit it", false},
	{"marshal", "encoding/json.Marshal", "  encode the whole config again (json.Marshal)", false},
	{"index-ids", caddyPkg + "indexConfigObjects", "  walk the whole config for @id fields", false},
	{"decode-run", caddyPkg + "unsyncedDecodeAndRun", "  decode and run the new config", false},
	{"strip-ids", caddyPkg + "RemoveMetaFields", "    strip @id fields (a regexp over the whole JSON)", false},
	{"run", caddyPkg + "run", "    provision and start the apps", false},
	{"module-json", caddyPkg + "StrictUnmarshalJSON", "      decode module JSON (this handler included)", false},
	{"provision", modulePrefix + "(*Handler).Provision", "      atomsphere_cors: check and build the index (Provision)", true},
	{"compile-account", modulePrefix + "compileAccount", "        of which checking and compiling each account", true},
	{"stop-old", caddyPkg + "unsyncedStop", "    stop the old config", true},
	{"gc", "runtime.gcBgMarkWorker", "garbage collector (background marking)", true},
}

// stepsOf returns the steps reported for op: an edit's request body is a
// few bytes, so decoding it is sparse.
func stepsOf(op string) []step {
	steps := slices.Clone(adminSteps)
	for i := range steps {
		if op == "edit" && steps[i].key == "decode-body" {
			steps[i].sparse = true
		}
	}
	return steps
}

// binaryFuncs returns the names of the functions of an ELF Go binary,
// read from its pclntab (which -ldflags -s -w keeps).
func binaryFuncs(path string) (map[string]bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pcln, text := f.Section(".gopclntab"), f.Section(".text")
	if pcln == nil || text == nil {
		return nil, fmt.Errorf("%s: no .gopclntab or .text section", path)
	}
	data, err := pcln.Data()
	if err != nil {
		return nil, err
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil, err
	}
	names := make(map[string]bool, len(tab.Funcs))
	for _, fn := range tab.Funcs {
		names[fn.Name] = true
	}
	return names, nil
}

type profResult struct {
	p   *profile.Profile
	err error
}

// fetchProfile takes a CPU profile of d from the admin API, in the
// background, and saves it as <name>.pprof in the work directory.
func (r *runner) fetchProfile(ctx context.Context, name string, d time.Duration) <-chan profResult {
	ch := make(chan profResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, d+2*time.Minute)
		defer cancel()
		url := "http://" + adminAddr + "/debug/pprof/profile?seconds=" + strconv.Itoa(int(d/time.Second))
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			ch <- profResult{err: err}
			return
		}
		resp, err := client.Do(req)
		if err != nil {
			ch <- profResult{err: err}
			return
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s: %.200s", url, resp.Status, raw)
		}
		if err != nil {
			ch <- profResult{err: err}
			return
		}
		_ = os.WriteFile(filepath.Join(r.work, name+".pprof"), raw, 0o644)
		p, err := profile.Parse(bytes.NewReader(raw))
		ch <- profResult{p, err}
	}()
	return ch
}

// cpuIndex is the index of the CPU time among a sample's values.
func cpuIndex(p *profile.Profile) int {
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			return i
		}
	}
	return len(p.SampleType) - 1
}

// stackFuncs calls f once for each distinct function in a sample's stack,
// inlined frames included.
func stackFuncs(s *profile.Sample, f func(name string)) {
	seen := map[string]bool{}
	for _, loc := range s.Location {
		for _, line := range loc.Line {
			if line.Function != nil && !seen[line.Function.Name] {
				seen[line.Function.Name] = true
				f(line.Function.Name)
			}
		}
	}
}

// cumulative returns the profile's total CPU time and, for each of names
// found in a sample's stack, the CPU time of those samples (cum in
// pprof's terms); a name missing from found is in no sample.
func cumulative(p *profile.Profile, names []string) (total time.Duration, cum map[string]time.Duration, found map[string]bool) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	i := cpuIndex(p)
	cum, found = map[string]time.Duration{}, map[string]bool{}
	for _, s := range p.Sample {
		v := time.Duration(s.Value[i])
		total += v
		stackFuncs(s, func(name string) {
			if want[name] {
				cum[name] += v
				found[name] = true
			}
		})
	}
	return total, cum, found
}

// moduleShare splits a profile taken under wrk: the CPU time of samples
// in the module's code and not in the next handler's (respond), and of
// those in respond, over the total.
func moduleShare(p *profile.Profile) (own, respond, total time.Duration, found map[string]bool) {
	i := cpuIndex(p)
	found = map[string]bool{}
	for _, s := range p.Sample {
		v := time.Duration(s.Value[i])
		total += v
		var inModule, inRespond bool
		stackFuncs(s, func(name string) {
			switch {
			case name == respondServe:
				inRespond = true
			case strings.HasPrefix(name, modulePrefix):
				inModule = true
			}
			if name == moduleServe || name == respondServe {
				found[name] = true
			}
		})
		switch {
		case inRespond:
			respond += v
		case inModule:
			own += v
		}
	}
	return own, respond, total, found
}

// getProfile profiles Caddy during one more GET run against v, and
// checks the module's own share of the CPU.
func (r *runner) getProfile(ctx context.Context, v variant) error {
	// at least 4 s: the module's share is a few percent, and a shorter
	// profile may hold no sample of it
	d := max(r.cfg.duration, 4*time.Second)
	say("== CPU profile under wrk: GET at %d accounts, %s", v.accounts, d)
	ch := r.fetchProfile(ctx, "get", d)
	if _, err := r.wrk(ctx, v, "get", d); err != nil {
		return err
	}
	res := <-ch
	if res.err != nil {
		r.checkf(false, "GET profile", "%v", res.err)
		return nil
	}
	own, respond, total, found := moduleShare(res.p)
	for _, name := range []string{moduleServe, respondServe} {
		r.checkf(found[name], "GET profile", "%s in the profile", name)
	}
	if total <= 0 {
		r.checkf(false, "GET profile", "no CPU samples")
		return nil
	}
	ownShare, respondShare := float64(own)/float64(total), float64(respond)/float64(total)
	say("CPU profile under wrk, GET at %d accounts: atomsphere_cors (next handler excluded) %.2f%%, respond %.2f%% of Caddy's CPU (%s of CPU in %s)",
		v.accounts, 100*ownShare, 100*respondShare, total.Round(time.Millisecond), d)
	r.checkf(ownShare <= r.cfg.maxModuleCPU, "module CPU share", "%.2f%% of Caddy's CPU under wrk (ceiling %.0f%%)", 100*ownShare, 100*r.cfg.maxModuleCPU)
	result(fmt.Sprintf("E2EProfile/case=get/accounts=%d", v.accounts),
		metric{100 * ownShare, "module-cpu-%"}, metric{100 * respondShare, "respond-cpu-%"})
	return nil
}

// Repeats of a profiled admin request: the request is sent again (a
// forced reload) until the requests have kept Caddy busy minBusy, so that
// a small -big still gives the profile samples of every step.
const (
	minBusy    = 3 * time.Second
	maxRepeats = 100
)

// profiled sends an admin request under a CPU profile of -profile, once
// or repeated (see minBusy), reports each request as a benchmark line,
// checks that each succeeded, and prints where the CPU time went.
// send(i) sends the i-th request.
func (r *runner) profiled(ctx context.Context, p *proc, op, title string, send func(i int) (answer, error)) error {
	window := r.cfg.profile
	ch := r.fetchProfile(ctx, op, window)
	// let the profile start before the request
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(500 * time.Millisecond):
	}
	begin := time.Now()
	var times []time.Duration
	var busy time.Duration
	var failure string
	for i := range maxRepeats {
		a, err := send(i)
		if err == nil && a.status != http.StatusOK {
			err = fmt.Errorf("%d %s", a.status, strings.TrimSpace(a.body))
		}
		if err != nil {
			failure = fmt.Sprintf("request %d: %v", i+1, err)
			break
		}
		times = append(times, a.took)
		rss := rssBytes(p.pid)
		result(fmt.Sprintf("E2EAdmin/op=%s/accounts=%d", op, r.cfg.big), metric{a.took.Seconds(), "sec/op"}, metric{rss, "rss-B"})
		if i == 0 {
			say("%s: %s; RSS after %.0f MB", title, a.took.Round(time.Millisecond), rss/1e6)
		}
		busy += a.took
		if busy >= minBusy || time.Since(begin)+a.took > window-profileMargin {
			break
		}
	}
	if failure == "" {
		r.checkf(true, op, "%s: %d of %d requests answered 200", title, len(times), len(times))
	} else {
		r.checkf(false, op, "%s: %s", title, failure)
	}
	if len(times) > 1 {
		t := make([]float64, len(times))
		for i, d := range times {
			t[i] = d.Seconds()
		}
		say("%s: repeated %d times (a forced reload) to fill the profile; median %.1f ms", title, len(times), 1000*median(t))
	}
	if time.Since(begin) > window {
		say("warning: the requests outlasted the %s profile; raise -profile", window)
	}

	res := <-ch
	if res.err != nil {
		r.checkf(false, op+" profile", "%v", res.err)
		return nil
	}
	if len(times) == 0 {
		return nil
	}
	steps := stepsOf(op)
	names := make([]string, len(steps))
	for i, s := range steps {
		names[i] = s.fn
	}
	_, cum, found := cumulative(res.p, names)
	var missing, unsampled []string
	for _, s := range steps {
		switch {
		case found[s.fn]:
		case !s.sparse:
			missing = append(missing, s.fn)
		case r.inCaddy(s.fn):
			unsampled = append(unsampled, s.fn)
		default:
			missing = append(missing, s.fn+" (not in the caddy binary either)")
		}
	}
	note := fmt.Sprintf("%d of the report's %d functions in the profile", len(steps)-len(missing)-len(unsampled), len(steps))
	if len(unsampled) > 0 {
		note += fmt.Sprintf("; not sampled but in the caddy binary: %v", unsampled)
	}
	if len(missing) > 0 {
		note += fmt.Sprintf("; missing (renamed?): %v", missing)
	}
	r.checkf(len(missing) == 0, op+" profile", "%s", note)
	say("-- where the time goes (cumulative CPU seconds per request, %s profile of %d request(s)):", window, len(times))
	for _, s := range steps {
		if !found[s.fn] {
			say("   %8s  %s [no sample]", "-", s.label)
			continue
		}
		per := cum[s.fn].Seconds() / float64(len(times))
		say("   %7.3fs  %s", per, s.label)
		result(fmt.Sprintf("E2EProfile/op=%s/step=%s/accounts=%d", op, s.key, r.cfg.big), metric{per, "cpu-sec/op"})
	}
	return nil
}

// inCaddy reports whether fn is a function of the caddy binary.
func (r *runner) inCaddy(fn string) bool {
	if r.caddyFuncs == nil {
		names, err := binaryFuncs(r.caddy)
		if err != nil {
			say("reading the functions of %s: %v", r.caddy, err)
			names = map[string]bool{}
		}
		r.caddyFuncs = names
	}
	return r.caddyFuncs[fn]
}
