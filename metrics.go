package atomspherecors

import (
	"errors"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/rulestore"
)

// Metrics. The module's collectors are created once per process and
// registered in the metrics registry of every config that provisions a
// handler, so they appear on Caddy's /metrics next to Caddy's own, and
// keep counting across config reloads (each reload, and each admin API
// edit, has a registry of its own). Labels never carry an account ID or
// an origin: their sets are small and fixed, whatever the config or the
// traffic (docs/operating.md, "Metrics").

// reasonOther counts a denial whose reason a kind cannot have, so that
// every decision is counted under a label of a small, fixed set.
const reasonOther = "other"

// deniedReasons are the reasons of denials that each kind of request can
// have: a preflight always has an Origin; only a preflight has an
// Access-Control-Request-Method. Each is a reason label of the metrics.
var deniedReasons = []struct {
	reason            policy.Reason
	preflight, normal bool
}{
	{policy.NoOrigin, false, true},
	{policy.RepeatedOrigin, true, true},
	{policy.NoRules, true, true},
	{policy.OriginNotAllowed, true, true},
	{policy.MalformedOrigin, true, true},
	{policy.MethodNotAllowed, true, true},
	{policy.RepeatedRequestMethod, true, false},
	{policy.AmbiguousPath, true, true},
	{policy.DeferredHeaders, true, true},
}

// decisions counts decisions, exported as
// caddy_atomsphere_cors_requests_total{kind, outcome, reason}. Counting is
// one atomic add into an array indexed by kind and reason, with no label
// lookup and no interface call on the request path; the labels are put
// together when the metrics are read. A reason a kind cannot have (a
// preflight always has an Origin, only a preflight has an
// Access-Control-Request-Method) is counted as other.
var decisions = &decisionCollector{
	desc: prometheus.NewDesc("caddy_atomsphere_cors_requests_total",
		"Requests on account paths decided by atomsphere_cors, by kind (preflight, normal), "+
			"outcome (allowed, denied) and reason of a denial (empty when allowed).",
		[]string{"kind", "outcome", "reason"}, nil),
}

// decisionCollector is the prometheus.Collector of the decision counts.
type decisionCollector struct {
	desc *prometheus.Desc
	n    [policy.NumKinds][policy.NumReasons]atomic.Uint64
}

// count counts one decision.
func (c *decisionCollector) count(d *policy.Decision) { c.n[d.Kind][d.Reason].Add(1) }

func (c *decisionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect sends one series per kind and outcome-and-reason the kind can
// have, zeros included, so that a rate can be taken from the first scrape.
func (c *decisionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, k := range []policy.Kind{policy.Preflight, policy.Normal} {
		n := &c.n[k]
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n[policy.Allowed].Load()), k.String(), "allowed", "")
		var can [policy.NumReasons]bool
		for _, r := range deniedReasons {
			can[r.reason] = k == policy.Preflight && r.preflight || k == policy.Normal && r.normal
		}
		other := uint64(0)
		for r := policy.Allowed + 1; r < policy.NumReasons; r++ {
			if can[r] {
				ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n[r].Load()), k.String(), "denied", r.String())
			} else {
				other += n[r].Load()
			}
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(other), k.String(), "denied", reasonOther)
	}
}

// registerStoreMetrics registers the rules store's metrics in the
// config's registry; call it from the store's Provision.
func registerStoreMetrics(ctx caddy.Context) error {
	return registerOnce(ctx, rulestore.Collectors()...)
}

// registerMetrics registers the decision counters in the config's
// registry.
func registerMetrics(ctx caddy.Context) error {
	return registerOnce(ctx, decisions)
}

// registerOnce registers collectors in ctx's registry. Every handler of
// a config provisions with the same registry: a collector registered
// already is not an error.
func registerOnce(ctx caddy.Context, cs ...prometheus.Collector) error {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) && are.ExistingCollector == c {
				continue
			}
			return err
		}
	}
	return nil
}
