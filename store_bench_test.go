package atomspherecors

import (
	"fmt"
	"testing"
)

// BenchmarkStoreEdit100k is the cost of applying one account's change
// to a store of 100 000 accounts (the overlay copy, and the merges it
// amortises), and BenchmarkStoreLookup100k a request's lookup in it.
func BenchmarkStoreEdit100k(b *testing.B) {
	v := storeView100k()
	one := &account{origins: []allowedOrigin{{origin: "https://x.example", methods: &methodSet{list: []string{"GET"}}}}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		v = v.with(map[string]*account{fmt.Sprintf("edit-%d", i%50000): one})
	}
}

func BenchmarkStoreLookup100k(b *testing.B) {
	v := storeView100k()
	for i := range 300 {
		v = v.with(map[string]*account{fmt.Sprintf("edit-%d", i): {}})
	}
	s := &accountStore{}
	s.view.Store(v)
	b.ResetTimer()
	for i := range b.N {
		_ = s.get("account-054321")
		_ = i
	}
}

func storeView100k() *accountsView {
	m := make(map[string]account, 100000)
	one := account{origins: []allowedOrigin{{origin: "https://a.example", methods: &methodSet{list: []string{"GET"}}}}}
	for i := range 100000 {
		m[fmt.Sprintf("account-%06d", i)] = one
	}
	return newView(m)
}
