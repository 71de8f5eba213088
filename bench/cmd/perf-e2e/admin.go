package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"atomspherecors/bench/accounts"
)

// admin is parts 2 and 3: caddy start and POST /load with -big accounts,
// then one admin-API edit of one account.
func (r *runner) admin(ctx context.Context) error {
	n := r.cfg.big
	say("== 2. %d accounts: caddy start, POST /load", n)
	big, err := bigConfig(n)
	if err != nil {
		return err
	}
	empty, err := emptyConfig()
	if err != nil {
		return err
	}
	bigFile, emptyFile := filepath.Join(r.work, "big.json"), filepath.Join(r.work, "empty.json")
	if err := os.WriteFile(bigFile, big, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(emptyFile, empty, 0o644); err != nil {
		return err
	}
	say("config: %.1f MB of JSON", float64(len(big))/1e6)
	if err := ensureFree(adminAddr, bigAddr); err != nil {
		return err
	}

	// caddy start: from exec to the config running (start waits for it).
	probe := n / 3 // an account whose rules show that the config runs
	p, took, err := r.startCaddy(ctx, "caddy-start-big", bigFile)
	if err != nil {
		r.checkf(false, "caddy start", "%d accounts: %v", n, err)
	} else {
		rss := rssBytes(p.pid)
		say("caddy start with %d accounts: %s; RSS %.0f MB", n, took.Round(time.Millisecond), rss/1e6)
		result(fmt.Sprintf("E2EAdmin/op=start/accounts=%d", n), metric{took.Seconds(), "sec/op"}, metric{rss, "rss-B"})
		r.expectPreflight(ctx, "caddy start", probe, accounts.Origins(probe)[0], true)
	}
	if p != nil {
		r.stop(p)
	}

	if err := ensureFree(adminAddr, bigAddr); err != nil {
		return err
	}
	p, took, err = r.startCaddy(ctx, "caddy-start-empty", emptyFile)
	if err != nil {
		if p != nil {
			r.stop(p)
		}
		return err
	}
	defer r.stop(p)
	rss := rssBytes(p.pid)
	say("caddy start with an empty config (process start-up alone): %s; RSS %.0f MB", took.Round(time.Millisecond), rss/1e6)
	result("E2EAdmin/op=start/accounts=0", metric{took.Seconds(), "sec/op"}, metric{rss, "rss-B"})

	jsonHdr := func(i int) http.Header {
		h := http.Header{"Content-Type": {"application/json"}}
		if i > 0 {
			// the same config again: reload it all the same
			h.Set("Cache-Control", "must-revalidate")
		}
		return h
	}
	err = r.profiled(ctx, p, "load", fmt.Sprintf("POST /load of %d accounts", n), func(i int) (answer, error) {
		return adminDo(ctx, http.MethodPost, "/load", big, jsonHdr(i))
	})
	if err != nil {
		return err
	}
	r.expectPreflight(ctx, "load", probe, accounts.Origins(probe)[0], true)

	say("== 3. one admin-API edit with %d accounts", n)
	target := n / 2
	const newOrigin = "https://new.example.com"
	body := []byte(`[{"origin":"` + newOrigin + `","methods":["GET","POST"]}]`)
	err = r.profiled(ctx, p, "edit", "PATCH .../accounts/"+accounts.ID(target), func(i int) (answer, error) {
		return adminDo(ctx, http.MethodPatch, editPath(accounts.ID(target)), body, jsonHdr(i))
	})
	if err != nil {
		return err
	}
	r.expectPreflight(ctx, "edit", target, newOrigin, true)
	r.expectPreflight(ctx, "edit", target, accounts.Origins(target)[0], false)
	r.stop(p)
	return nil
}

// expectPreflight sends a preflight for account i from origin to the
// site at bigAddr, and checks that it is allowed (204 and
// Access-Control-Allow-Origin) or refused (401).
func (r *runner) expectPreflight(ctx context.Context, name string, i int, origin string, allowed bool) {
	r.expectPreflightAt(ctx, client, bigAddr, name, i, origin, allowed)
}

// expectPreflightAt is expectPreflight to the site at site, with c.
func (r *runner) expectPreflightAt(ctx context.Context, c *http.Client, site, name string, i int, origin string, allowed bool) {
	a, err := preflight(ctx, c, site, accounts.ID(i), origin)
	if err != nil {
		r.checkf(false, name, "preflight for %s from %s: %v", accounts.ID(i), origin, err)
		return
	}
	acao := a.header.Get("Access-Control-Allow-Origin")
	want, ok := "allowed (204)", isAllowed(a, origin)
	if !allowed {
		want, ok = "refused (401)", a.status == http.StatusUnauthorized && acao == ""
	}
	r.checkf(ok, name, "next preflight for %s from %s -> %d, Access-Control-Allow-Origin %q; want %s",
		accounts.ID(i), origin, a.status, acao, want)
}

// preflight sends a preflight (OPTIONS with Origin and
// Access-Control-Request-Method) for account id from origin to the site
// at site.
func preflight(ctx context.Context, c *http.Client, site, id, origin string) (answer, error) {
	url := "http://" + site + "/api/rest/v1/" + id + "/x"
	return doWith(ctx, c, http.MethodOptions, url, nil, http.Header{"Origin": {origin}, "Access-Control-Request-Method": {"POST"}})
}

// isAllowed reports whether a preflight's answer allows origin.
func isAllowed(a answer, origin string) bool {
	return a.status == http.StatusNoContent && a.header.Get("Access-Control-Allow-Origin") == origin
}
