// Package bench compares atomsphere_cors with github.com/rs/cors, a
// single-policy CORS library. It is its own module so that users' builds
// never depend on rs/cors, nor on github.com/google/pprof, which
// cmd/perf-e2e (the end-to-end measurement in a real Caddy) reads
// profiles with. Both configure the accounts that bench/accounts
// generates.
package bench
