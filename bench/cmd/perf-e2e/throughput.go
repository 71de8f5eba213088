package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// kinds are the requests of the comparison: a GET and a preflight, both
// from the target account's first origin.
var kinds = []string{"get", "preflight"}

const preflightLua = `wrk.method = "OPTIONS"
wrk.headers["Access-Control-Request-Method"] = "POST"
wrk.headers["Access-Control-Request-Headers"] = "authorization,content-type"
`

// throughput is part 1: requests/s of each variant, the checks on them,
// and the module's share of the CPU under wrk.
func (r *runner) throughput(ctx context.Context) error {
	say("== 1. requests/s: wrk -t1 -c%d -d%s, %d rounds in alternating order", r.cfg.connections, r.cfg.duration, r.cfg.rounds)
	caddyfile := filepath.Join(r.work, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(sitesCaddyfile()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.work, "preflight.lua"), []byte(preflightLua), 0o644); err != nil {
		return err
	}
	addrs := []string{adminAddr}
	for _, v := range variants {
		addrs = append(addrs, v.addr())
	}
	if err := ensureFree(addrs...); err != nil {
		return err
	}
	p, err := r.runCaddy(ctx, "caddy-sites", "--config", caddyfile, "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	defer r.stop(p)

	r.siteChecks(ctx)

	// rps[kind][variant] holds one value per round.
	rps := map[string]map[string][]float64{}
	for _, k := range kinds {
		rps[k] = map[string][]float64{}
	}
	var wrkErrs []string
	for round := range r.cfg.rounds {
		order := slices.Clone(variants)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, kind := range kinds {
			for _, v := range order {
				res, err := r.wrk(ctx, v, kind, r.cfg.duration)
				if err != nil {
					return err
				}
				rps[kind][v.name] = append(rps[kind][v.name], res.rps)
				if res.non2xx > 0 || res.socketErrors > 0 {
					wrkErrs = append(wrkErrs, fmt.Sprintf("round %d %s %s: %d non-2xx, %d socket errors of %d requests",
						round+1, kind, v.name, res.non2xx, res.socketErrors, res.requests))
				}
			}
		}
		for _, kind := range kinds {
			for _, v := range variants {
				ms := []metric{{rps[kind][v.name][round], "req/s"}}
				if v.cors != "none" {
					ms = append(ms, metric{rps[kind][v.name][round] / rps[kind]["none"][round], "vs-none"})
				}
				if v.cors == "module" {
					s := fmt.Sprintf("snippet-%d", v.accounts)
					ms = append(ms, metric{rps[kind][v.name][round] / rps[kind][s][round], "vs-snippet"})
				}
				result(v.benchName(kind), ms...)
			}
		}
		say("round %d of %d done", round+1, r.cfg.rounds)
	}
	if len(wrkErrs) == 0 {
		r.checkf(true, "wrk runs", "every response 2xx, no socket errors, in %d runs", r.cfg.rounds*len(kinds)*len(variants))
	} else {
		r.checkf(false, "wrk runs", "%s", strings.Join(wrkErrs, "; "))
	}

	if err := r.getProfile(ctx, variantNamed("module-1000")); err != nil {
		return err
	}
	r.stop(p)
	r.throughputReport(rps)
	return nil
}

// siteChecks sends one preflight and one GET to each site, and checks
// that each answers as intended: the module and the snippet allow the
// target's origin, the site without CORS sends no CORS header.
func (r *runner) siteChecks(ctx context.Context) {
	for _, v := range variants {
		origin := v.origin()
		pre, err := do(ctx, http.MethodOptions, v.url(), nil, http.Header{
			"Origin": {origin}, "Access-Control-Request-Method": {"POST"},
			"Access-Control-Request-Headers": {"authorization,content-type"}})
		if err != nil {
			r.checkf(false, v.name+" answers", "preflight: %v", err)
			continue
		}
		get, err := do(ctx, http.MethodGet, v.url(), nil, http.Header{"Origin": {origin}})
		if err != nil {
			r.checkf(false, v.name+" answers", "GET: %v", err)
			continue
		}
		preACAO, getACAO := pre.header.Get("Access-Control-Allow-Origin"), get.header.Get("Access-Control-Allow-Origin")
		var ok bool
		if v.cors == "none" {
			ok = pre.status == 200 && preACAO == "" && get.status == 200 && getACAO == ""
		} else {
			ok = pre.status == 204 && preACAO == origin && get.status == 200 && get.body == "ok" && getACAO == origin
		}
		r.checkf(ok, v.name+" answers", "preflight from %s -> %d, Access-Control-Allow-Origin %q; GET -> %d %q, Access-Control-Allow-Origin %q",
			origin, pre.status, preACAO, get.status, get.body, getACAO)
		if v.cors == "module" {
			const evil = "https://evil.example.com"
			den, err := do(ctx, http.MethodOptions, v.url(), nil, http.Header{"Origin": {evil}, "Access-Control-Request-Method": {"POST"}})
			if err != nil {
				r.checkf(false, v.name+" refuses", "preflight: %v", err)
				continue
			}
			r.checkf(den.status == 401 && den.header.Get("Access-Control-Allow-Origin") == "", v.name+" refuses",
				"preflight from %s -> %d (want 401)", evil, den.status)
		}
	}
}

// wrkResult is what one wrk run reports.
type wrkResult struct {
	rps          float64
	requests     int
	non2xx       int
	socketErrors int
}

// wrk runs wrk against v for d.
func (r *runner) wrk(ctx context.Context, v variant, kind string, d time.Duration) (wrkResult, error) {
	args := []string{"-t1", "-c" + strconv.Itoa(r.cfg.connections), "-d" + strconv.Itoa(int(d/time.Second)) + "s",
		"-H", "Origin: " + v.origin()}
	if kind == "preflight" {
		args = append(args, "-s", filepath.Join(r.work, "preflight.lua"))
	}
	args = append(args, v.url())
	wctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	out, err := command(wctx, "wrk", args...).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	res, err := parseWrk(string(out))
	if err != nil {
		return res, fmt.Errorf("wrk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return res, nil
}

var (
	reRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	reRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	reSocket   = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx   = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads wrk's report.
func parseWrk(out string) (wrkResult, error) {
	var res wrkResult
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return res, errors.New("no Requests/sec in wrk's output")
	}
	res.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := reRequests.FindStringSubmatch(out); m != nil {
		res.requests, _ = strconv.Atoi(m[1])
	}
	if m := reSocket.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			res.socketErrors += n
		}
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		res.non2xx, _ = strconv.Atoi(m[1])
	}
	if res.rps <= 0 || res.requests == 0 {
		return res, errors.New("no requests answered")
	}
	return res, nil
}

// throughputReport prints the medians and checks the module's ratios.
// Ratios are taken within a round (runs seconds apart), then the median
// over the rounds: the machine's load drifts less within a round.
func (r *runner) throughputReport(rps map[string]map[string][]float64) {
	say("%-10s %-13s %11s  %s", "request", "site", "median rps", "vs none (median of per-round ratios)")
	for _, kind := range kinds {
		for _, v := range variants {
			say("%-10s %-13s %11.0f %10.3f", kind, v.name, median(rps[kind][v.name]), median(ratios(rps[kind][v.name], rps[kind]["none"])))
		}
		for _, n := range []int{1, 1000} {
			say("%s: module/snippet at %d accounts = %.2f", kind, n,
				median(ratios(rps[kind][fmt.Sprintf("module-%d", n)], rps[kind][fmt.Sprintf("snippet-%d", n)])))
		}
	}
	for _, kind := range kinds {
		for _, n := range []int{1, 1000} {
			q := median(ratios(rps[kind][fmt.Sprintf("module-%d", n)], rps[kind]["none"]))
			r.checkf(q >= r.cfg.minVsNone, fmt.Sprintf("%s, module-%d vs none", kind, n),
				"requests/s ratio %.3f (floor %.2f)", q, r.cfg.minVsNone)
		}
		q := median(ratios(rps[kind]["module-1000"], rps[kind]["snippet-1000"]))
		r.checkf(q >= r.cfg.minVsSnippet, kind+", module-1000 vs snippet-1000",
			"requests/s ratio %.2f (floor %.2f)", q, r.cfg.minVsSnippet)
	}
}

// ratios returns a[i]/b[i] for each round.
func ratios(a, b []float64) []float64 {
	out := make([]float64, 0, len(a))
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// median of xs; 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
