package balancers

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestNewSNIFilter(t *testing.T) {
	tests := []struct {
		matching, unexpected string
		wantS, wantU         string
		wantErr              string
	}{
		{"", "", "exact", "default", ""},
		{"EXACT", "Reject", "exact", "reject", ""},
		{"regexp", "any", "regexp", "any", ""},
		{"glob", "", "", "", "hostname_matching_strategy"},
		{"exact", "drop", "", "", "unexpected_hostname_strategy"},
	}
	for _, tt := range tests {
		f, err := NewSNIFilter(tt.matching, tt.unexpected)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewSNIFilter(%q, %q) err = %v, want one naming %s", tt.matching, tt.unexpected, err, tt.wantErr)
			}
			continue
		}
		if err != nil || f.Strategy != tt.wantS || f.Unexpected != tt.wantU {
			t.Errorf("NewSNIFilter(%q, %q) = %+v, %v", tt.matching, tt.unexpected, f, err)
		}
	}
}

func TestSNIFilter(t *testing.T) {
	exactPool := []string{
		"10.0.0.1:443 sni=db.internal",
		"10.0.0.2:443 sni=DB.Internal",
		"10.0.0.3:443 sni=api.svc.test",
		"10.0.0.4:443",
		"10.0.0.5:443",
		"10.0.0.6:443 priority=2 sni=late.test",
	}
	regexpPool := []string{
		`10.0.0.1:443 sni=^db\d+\.internal$`,
		`10.0.0.2:443 sni=\.api\.test$`,
		`10.0.0.3:443 sni=([`, // invalid: matches nothing
		`10.0.0.4:443`,
		`10.0.0.5:443 sni=cache`, // unanchored, as in gobetween
	}
	plainOnly := []string{"10.0.0.1:443 sni=db.internal"}
	tests := []struct {
		name                 string
		pool                 []string
		matching, unexpected string
		sni                  string
		want                 []string // backends the client may use (last octets)
		wantErr              error
	}{
		{"exact", exactPool, "exact", "default", "db.internal", []string{"1", "2"}, nil},
		{"exact ignores case", exactPool, "exact", "default", "Db.INTERNAL", []string{"1", "2"}, nil},
		{"exact is not a suffix match", exactPool, "exact", "reject", "x.db.internal", nil, ErrNoMatch},
		{"expected in a later priority group", exactPool, "exact", "reject", "late.test", []string{"6"}, nil},
		{"unexpected: default", exactPool, "exact", "default", "other.test", []string{"4", "5"}, nil},
		{"unexpected: reject", exactPool, "exact", "reject", "other.test", nil, ErrNoMatch},
		{"unexpected: any", exactPool, "exact", "any", "other.test", []string{"1", "2", "3", "4", "5", "6"}, nil},
		{"no sni: default", exactPool, "exact", "default", "", []string{"4", "5"}, nil},
		{"no sni: reject", exactPool, "exact", "reject", "", nil, ErrNoMatch},
		{"no sni: any", exactPool, "exact", "any", "", []string{"1", "2", "3", "4", "5", "6"}, nil},
		{"default without plain backends", plainOnly, "exact", "default", "other.test", nil, ErrNoMatch},
		{"regexp", regexpPool, "regexp", "reject", "db12.internal", []string{"1"}, nil},
		{"regexp ignores case", regexpPool, "regexp", "reject", "DB7.Internal", []string{"1"}, nil},
		{"regexp anchors are the pattern's", regexpPool, "regexp", "reject", "x.db1.internal", nil, ErrNoMatch},
		{"regexp suffix", regexpPool, "regexp", "reject", "eu.api.test", []string{"2"}, nil},
		{"regexp unanchored", regexpPool, "regexp", "reject", "cache-3.internal", []string{"5"}, nil},
		{"regexp two matches", regexpPool, "regexp", "reject", "cache.api.test", []string{"2", "5"}, nil},
		{"regexp unexpected: default", regexpPool, "regexp", "default", "web.test", []string{"4"}, nil},
		{"regexp does not treat a plain backend as match-all", regexpPool, "regexp", "reject", "web.test", nil, ErrNoMatch},
		{"regexp no sni: any", regexpPool, "regexp", "any", "", []string{"1", "2", "3", "4", "5"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := mkPool(t, tt.pool...)
			f, err := NewSNIFilter(tt.matching, tt.unexpected)
			if err != nil {
				t.Fatal(err)
			}
			for _, install := range []string{"Prepare", "method value"} {
				c := client("192.0.2.1", 1234)
				c.SNI = tt.sni
				if install == "method value" {
					c.Match = f.Match
				}
				f.Prepare(c, pool)
				if c.Match == nil {
					t.Fatal("Prepare left Match nil")
				}
				var got []string
				for _, b := range pool {
					if c.Match(c, b) {
						got = append(got, b.Host[len("10.0.0."):])
					}
				}
				if !slices.Equal(got, tt.want) {
					t.Errorf("%s: client may use %v, want %v", install, got, tt.want)
				}
				// and Elect agrees, for every policy
				for _, p := range policies() {
					b, err := p.bal.Elect(c, pool)
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("%s: Elect err = %v, want %v", p.name, err, tt.wantErr)
					}
					if err == nil && !slices.Contains(tt.want, b.Host[len("10.0.0."):]) {
						t.Fatalf("%s: elected %s, want one of %v", p.name, b.Address(), tt.want)
					}
				}
			}
		})
	}
}

func TestSNIExpectedClientIsNotSpilledWhenFull(t *testing.T) {
	pool := mkPool(t, "10.0.0.1:443 sni=db.internal max_connections=1", "10.0.0.2:443")
	f, _ := NewSNIFilter("exact", "any")
	defer fill(t, pool[0])()
	c := client("192.0.2.1", 1)
	c.SNI = "db.internal"
	f.Prepare(c, pool)
	if b, err := new(RoundRobin).Elect(c, pool); !errors.Is(err, ErrAllFull) {
		t.Fatalf("Elect = %v, %v; want ErrAllFull (its backend is full; never another site's)", b, err)
	}
}

func TestSNIUnprepared(t *testing.T) {
	pool := mkPool(t, "10.0.0.1:443 sni=db.internal", "10.0.0.2:443")
	f, _ := NewSNIFilter("exact", "any")
	c := client("192.0.2.1", 1)
	c.Match = f.Match
	c.SNI = "db.internal"
	if !c.Match(c, pool[0]) || c.Match(c, pool[1]) {
		t.Fatal("without Prepare an expected client must get exactly its backends")
	}
	c.SNI = "other.test"
	if _, err := new(First).Elect(c, pool); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("err = %v, want ErrNoMatch", err)
	}
}

func TestSNIPrepareElectZeroAlloc(t *testing.T) {
	for _, strategy := range []string{"exact", "regexp"} {
		t.Run(strategy, func(t *testing.T) {
			if strategy == "regexp" && raceEnabled {
				t.Skip("regexp's machine pool is a sync.Pool, which drops items under -race; run without -race")
			}
			pool := mkPool(t, `10.0.0.1:443 sni=^db\.internal$`, `10.0.0.2:443 sni=db.internal`, "10.0.0.3:443", `10.0.0.4:443 sni=^api\.test$`)
			f, _ := NewSNIFilter(strategy, "default")
			rr := new(RoundRobin)
			for _, name := range []string{"db.internal", "api.test", "other.test", ""} {
				c := client("192.0.2.1", 1)
				c.SNI = name
				f.Prepare(c, pool) // compiles the patterns once
				if a := testing.AllocsPerRun(100, func() {
					f.Prepare(c, pool)
					if _, err := rr.Elect(c, pool); err != nil {
						t.Fatal(err)
					}
				}); a != 0 {
					t.Errorf("%q: %v allocations per Prepare+Elect", name, a)
				}
			}
		})
	}
}

func TestSNIConcurrentRegexpCache(t *testing.T) {
	var lines []string
	for i := range 50 {
		lines = append(lines, "10.0.0."+strconv.Itoa(i+1)+`:443 sni=^s`+strconv.Itoa(i%25)+`\.test$`)
	}
	pool := mkPool(t, lines...)
	f, _ := NewSNIFilter("regexp", "reject")
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				c := client("192.0.2.1", 1)
				c.SNI = "s" + strconv.Itoa((i+w)%25) + ".test"
				f.Prepare(c, pool)
				b, err := new(First).Elect(c, pool)
				if err != nil || b.SNI != `^`+c.SNI[:len(c.SNI)-len(".test")]+`\.test$` {
					t.Errorf("%s -> %v, %v", c.SNI, b, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if m := f.patterns.Load(); m == nil || len(*m) != 25 {
		t.Errorf("cache holds %v patterns, want 25", m)
	}
}
