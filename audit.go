package atomspherecors

import (
	"errors"
	"net/http"
	"slices"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"atomspherecors/internal/rulestore"
)

// originDiff lists the origins after has and before had not (added),
// the reverse (removed), and those in both with other methods (changed).
func originDiff(before, after []Rule) (added, removed, changed []string) {
	old := make(map[string][]string, len(before))
	for _, r := range before {
		old[r.Origin] = r.Methods
	}
	for _, r := range after {
		m, ok := old[r.Origin]
		switch {
		case !ok:
			added = append(added, r.Origin)
		case !slices.Equal(m, r.Methods):
			changed = append(changed, r.Origin)
		}
		delete(old, r.Origin)
	}
	for _, r := range before {
		if _, ok := old[r.Origin]; ok {
			removed = append(removed, r.Origin)
		}
	}
	return added, removed, changed
}

// writeAudit is who wrote an account, from where: the fields of the
// audit log entries of the page and the admin routes.
type writeAudit struct {
	logger  *zap.Logger
	account string
	by      string
	client  string
}

// written logs a write at info: the account, who, from where, and the
// origins it added, removed and changed.
func (a writeAudit) written(before, after []Rule) {
	added, removed, changed := originDiff(before, after)
	a.logger.Info("account rules written",
		zap.String("account", a.account), zap.String("by", a.by), zap.String("client", a.client),
		zap.Strings("origins_added", added), zap.Strings("origins_removed", removed),
		zap.Strings("origins_changed", changed), zap.Int("rules", len(after)))
}

// refused logs a refused write at debug, with its status and why.
func (a writeAudit) refused(status int, why string) {
	if ce := a.logger.Check(zapcore.DebugLevel, "account rules write refused"); ce != nil {
		ce.Write(zap.String("account", a.account), zap.String("by", a.by), zap.String("client", a.client),
			zap.Int("status", status), zap.String("reason", why))
	}
}

// writeStatus is the status of a write the commit refused or failed.
func writeStatus(err error) int {
	var pe rulestore.ErrPrecondition
	if errors.As(err, &pe) {
		return http.StatusPreconditionFailed
	}
	return http.StatusServiceUnavailable
}
