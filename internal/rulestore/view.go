package rulestore

import (
	"maps"
	"slices"

	"atomspherecors/internal/policy"
)

// accountsView is one immutable state of a store's accounts, read by
// requests without locks through accountStore.view. A change batch
// builds a new view: the changed accounts go into a small overlay
// copied on every batch, over a large base map that is only rebuilt
// when the overlay has grown past mergeThreshold. An edit of one
// account among 10^5 so copies a few hundred entries, not 10^5
// (docs/store.md, "Figures").
type accountsView struct {
	base    map[string]policy.Account
	baseIDs []string                   // the keys of base, sorted
	overlay map[string]*policy.Account // changed since base was built; nil value: deleted
	count   int                        // accounts in the view
}

// mergeThreshold is the overlay size from which a batch folds the
// overlay into a new base: the cost of a batch stays below a copy of
// max(512, len(base)/64) entries, and a merge (a copy of the base)
// comes once in that many single edits.
func mergeThreshold(base int) int { return max(512, base/64) }

// Get returns an account's compiled rules and whether it exists.
func (v *accountsView) Get(id string) (policy.Account, bool) {
	if v.overlay != nil {
		if a, ok := v.overlay[id]; ok {
			if a == nil {
				return policy.Account{}, false
			}
			return *a, true
		}
	}
	a, ok := v.base[id]
	return a, ok
}

// with returns a new view with changes applied (a nil account deletes).
func (v *accountsView) with(changes map[string]*policy.Account) *accountsView {
	nv := &accountsView{base: v.base, baseIDs: v.baseIDs, count: v.count}
	nv.overlay = make(map[string]*policy.Account, len(v.overlay)+len(changes))
	maps.Copy(nv.overlay, v.overlay)
	for id, a := range changes {
		_, had := v.Get(id)
		switch {
		case had && a == nil:
			nv.count--
		case !had && a != nil:
			nv.count++
		}
		nv.overlay[id] = a
	}
	if len(nv.overlay) > mergeThreshold(len(nv.base)) {
		nv.merge()
	}
	return nv
}

// merge folds the overlay into a new base.
func (v *accountsView) merge() {
	base := make(map[string]policy.Account, v.count)
	maps.Copy(base, v.base)
	added := make([]string, 0, len(v.overlay))
	for id, a := range v.overlay {
		if a == nil {
			delete(base, id)
			continue
		}
		if _, ok := base[id]; !ok {
			added = append(added, id)
		}
		base[id] = *a
	}
	slices.Sort(added)
	ids := make([]string, 0, len(base))
	i := 0
	for _, id := range v.baseIDs { // sorted merge of the old IDs and the added ones
		if _, ok := base[id]; !ok {
			continue
		}
		for i < len(added) && added[i] < id {
			ids = append(ids, added[i])
			i++
		}
		ids = append(ids, id)
	}
	ids = append(ids, added[i:]...)
	v.base, v.baseIDs, v.overlay = base, ids, nil
}

// newView builds a view holding exactly accounts.
func newView(accounts map[string]policy.Account) *accountsView {
	ids := slices.Sorted(maps.Keys(accounts))
	return &accountsView{base: accounts, baseIDs: ids, count: len(accounts)}
}

// IDsAfter returns up to limit account IDs greater than after, in order,
// and whether more follow.
func (v *accountsView) IDsAfter(after string, limit int) ([]string, bool) {
	var extra []string // overlay IDs that exist, sorted
	for id, a := range v.overlay {
		if a != nil && id > after {
			if _, inBase := v.base[id]; !inBase {
				extra = append(extra, id)
			}
		}
	}
	slices.Sort(extra)
	i, _ := slices.BinarySearch(v.baseIDs, after)
	if i < len(v.baseIDs) && v.baseIDs[i] == after {
		i++
	}
	out := make([]string, 0, min(limit, 1024))
	j := 0
	for len(out) < limit && (i < len(v.baseIDs) || j < len(extra)) {
		if j < len(extra) && (i >= len(v.baseIDs) || extra[j] < v.baseIDs[i]) {
			out = append(out, extra[j])
			j++
			continue
		}
		id := v.baseIDs[i]
		i++
		if a, ok := v.overlay[id]; ok && a == nil {
			continue // deleted since the base was built
		}
		out = append(out, id)
	}
	more := false
	for ; i < len(v.baseIDs) && !more; i++ {
		if a, ok := v.overlay[v.baseIDs[i]]; !ok || a != nil {
			more = true
		}
	}
	return out, more || j < len(extra)
}

// RulesOf writes an account's compiled rules back as rules: origins in
// their normalised form, methods as merged (docs/store.md, "Reading").
func RulesOf(a policy.Account) []policy.Rule {
	out := make([]policy.Rule, len(a.Origins))
	for i, ao := range a.Origins {
		out[i] = policy.Rule{Origin: ao.Origin, Methods: slices.Clone(ao.Methods.List)}
	}
	return out
}
