package backend

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestAcquireHonoursMaxConnections(t *testing.T) {
	for _, tt := range []struct {
		name      string
		max       int
		workers   int
		wantLimit int64 // 0 = no limit expected
	}{
		{"max 10", 10, 100, 10},
		{"max 1", 1, 50, 1},
		{"unlimited", 0, 100, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := &Backend{Host: "127.0.0.1", Port: "1", MaxConnections: tt.max, Stats: new(Stats)}
			var (
				cur, peak, ok, refused atomic.Int64
				start                  = make(chan struct{})
				wg                     sync.WaitGroup
			)
			for range tt.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for range 200 {
						if !b.Acquire() {
							refused.Add(1)
							continue
						}
						ok.Add(1)
						n := cur.Add(1)
						for {
							p := peak.Load()
							if n <= p || peak.CompareAndSwap(p, n) {
								break
							}
						}
						if a := b.Stats.Active(); tt.wantLimit > 0 && a > tt.wantLimit {
							t.Errorf("Active() = %d > max %d", a, tt.wantLimit)
						}
						time.Sleep(time.Microsecond)
						cur.Add(-1)
						b.Release()
					}
				}()
			}
			close(start)
			wg.Wait()
			if tt.wantLimit > 0 && peak.Load() > tt.wantLimit {
				t.Fatalf("peak concurrent holders %d > max %d", peak.Load(), tt.wantLimit)
			}
			if tt.wantLimit == 0 && refused.Load() != 0 {
				t.Fatalf("unlimited backend refused %d acquisitions", refused.Load())
			}
			if ok.Load() == 0 {
				t.Fatal("no Acquire succeeded")
			}
			if got := b.Stats.Active(); got != 0 {
				t.Fatalf("Active() = %d after every Release, want 0", got)
			}
			if b.Full() {
				t.Fatal("Full() after every Release")
			}
		})
	}
}

func TestAcquireFullRefusesWithoutChange(t *testing.T) {
	b := &Backend{MaxConnections: 2, Stats: new(Stats)}
	for i := range 2 {
		if !b.Acquire() {
			t.Fatalf("Acquire %d of 2 failed", i+1)
		}
	}
	if !b.Full() {
		t.Fatal("Full() = false at max")
	}
	if b.Acquire() {
		t.Fatal("third Acquire succeeded with max_connections 2")
	}
	if got := b.Stats.Active(); got != 2 {
		t.Fatalf("Active() = %d after a refused Acquire, want 2", got)
	}
	b.Release()
	if b.Full() || !b.Acquire() {
		t.Fatal("Acquire after Release failed")
	}
}

func TestStatsCounters(t *testing.T) {
	var s Stats
	s.AddActive(3)
	s.AddActive(-1)
	s.AddTotal()
	s.AddTotal()
	s.AddRefused()
	s.AddRx(100)
	s.AddTx(40)
	s.AddRx(1)
	want := Snapshot{Active: 2, Total: 2, Refused: 1, Rx: 101, Tx: 40}
	got := s.Snapshot()
	if got != want {
		t.Fatalf("Snapshot() = %+v, want %+v", got, want)
	}
	// the JSON names are the admin API's
	js, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if wantJS := `{"active_connections":2,"total_connections":2,"refused_connections":1,"rx":101,"tx":40,"rx_second":0,"tx_second":0}`; string(js) != wantJS {
		t.Fatalf("JSON %s, want %s", js, wantJS)
	}
}

func near(got, want uint64) bool {
	d := int64(got) - int64(want)
	return d >= -int64(want)/100-1 && d <= int64(want)/100+1
}

func TestStatsSampleRates(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	sec := func(f float64) time.Time { return t0.Add(time.Duration(f * float64(time.Second))) }

	type step struct {
		rx, tx int64   // bytes added before the sample
		at     float64 // seconds after t0
		wantRx uint64
		wantTx uint64
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"one second", []step{
			{at: 0},
			{rx: 1000, tx: 500, at: 1, wantRx: 1000, wantTx: 500},
		}},
		{"first sample gives no rate", []step{
			{rx: 5000, at: 0, wantRx: 0},
		}},
		{"half-second ticks average over 2 s", []step{
			{at: 0},
			{rx: 1000, at: 0.5, wantRx: 2000},
			{rx: 1000, at: 1.0, wantRx: 2000},
			{rx: 1000, at: 1.5, wantRx: 2000},
			{rx: 1000, at: 2.0, wantRx: 2000},
			{rx: 0, at: 2.5, wantRx: 1500},    // window 0.5..2.5: 3000 bytes
			{rx: 0, at: 3.0, wantRx: 1000},    // window 1.0..3.0: 2000 bytes
			{rx: 0, at: 3.5, wantRx: 500},     // window 1.5..3.5: 1000 bytes
			{rx: 0, at: 4.0, wantRx: 0},       // window 2.0..4.0: none
			{rx: 4000, at: 4.5, wantRx: 2000}, // window 2.5..4.5
		}},
		{"window is at most 2 s with one-second samples", []step{
			{at: 0},
			{rx: 1000, at: 1, wantRx: 1000},
			{at: 2, wantRx: 500},
			{at: 3, wantRx: 0}, // the bytes of second one left the window
			{at: 4, wantRx: 0},
		}},
		{"sparse samples use the newest base", []step{
			{at: 0},
			{rx: 10000, at: 10, wantRx: 1000},
			{rx: 3000, at: 13, wantRx: 1000},
		}},
		{"repeated timestamp still averages from the oldest base", []step{
			{at: 0},
			{rx: 1000, at: 1, wantRx: 1000},
			{rx: 1000, at: 1, wantRx: 2000},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Stats
			for i, st := range tt.steps {
				s.AddRx(st.rx)
				s.AddTx(st.tx)
				s.Sample(sec(st.at))
				snap := s.Snapshot()
				if !near(snap.RxSecond, st.wantRx) {
					t.Errorf("step %d (t=%.1fs): RxSecond = %d, want %d", i, st.at, snap.RxSecond, st.wantRx)
				}
				if !near(snap.TxSecond, st.wantTx) {
					t.Errorf("step %d (t=%.1fs): TxSecond = %d, want %d", i, st.at, snap.TxSecond, st.wantTx)
				}
				if got := s.RateSum(); got != snap.RxSecond+snap.TxSecond {
					t.Errorf("step %d: RateSum() = %d, want %d", i, got, snap.RxSecond+snap.TxSecond)
				}
			}
		})
	}
}

func TestStatsConcurrent(t *testing.T) {
	var s Stats
	var wg sync.WaitGroup
	now := time.Now()
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 1000 {
				s.AddRx(1)
				s.AddTx(2)
				if i == 0 && j%100 == 0 {
					s.Sample(now.Add(time.Duration(j) * time.Millisecond))
				}
				_ = s.Snapshot()
			}
		}()
	}
	wg.Wait()
	if snap := s.Snapshot(); snap.Rx != 4000 || snap.Tx != 8000 {
		t.Fatalf("Snapshot() = %+v, want rx 4000 tx 8000", snap)
	}
}

func TestTryAddActive(t *testing.T) {
	for _, tt := range []struct {
		max  int64
		want []bool
	}{
		{0, []bool{true, true, true}},
		{-1, []bool{true, true}},
		{2, []bool{true, true, false, false}},
	} {
		var s Stats
		for i, w := range tt.want {
			if got := s.TryAddActive(tt.max); got != w {
				t.Errorf("max %d call %d: TryAddActive = %v, want %v", tt.max, i, got, w)
			}
		}
		var n int64
		for _, w := range tt.want {
			if w {
				n++
			}
		}
		if s.Active() != n {
			t.Errorf("max %d: Active() = %d, want %d", tt.max, s.Active(), n)
		}
	}
}

func TestFreezeCachesIPLiteral(t *testing.T) {
	for _, tt := range []struct {
		host, port string
		want       string // AddrPort, "" = none
	}{
		{"127.0.0.1", "53", "127.0.0.1:53"},
		{"::1", "5353", "[::1]:5353"},
		{"fe80::1%eth0", "53", "[fe80::1%eth0]:53"},
		{"dns.example", "53", ""},
		{"127.0.0.1", "99999", ""},
		{"127.0.0.1", "http", ""},
	} {
		b := &Backend{Host: tt.host, Port: tt.port}
		if _, ok := b.AddrPort(); ok || b.UDPAddr() != nil {
			t.Errorf("%s:%s: parsed form before Freeze", tt.host, tt.port)
		}
		b.Freeze()
		ap, ok := b.AddrPort()
		ua := b.UDPAddr()
		if tt.want == "" {
			if ok || ua != nil {
				t.Errorf("%s:%s: AddrPort %v %v, UDPAddr %v; want none", tt.host, tt.port, ap, ok, ua)
			}
			continue
		}
		if !ok || ap.String() != tt.want {
			t.Errorf("%s:%s: AddrPort %v %v, want %s", tt.host, tt.port, ap, ok, tt.want)
		}
		if ua == nil || ua.AddrPort() != ap {
			t.Errorf("%s:%s: UDPAddr %v, want %s", tt.host, tt.port, ua, tt.want)
		}
		// a copy given another port and frozen again gets its own
		c := *b
		c.Port = "1"
		c.Freeze()
		if cp, _ := c.AddrPort(); cp.Port() != 1 || c.UDPAddr() == b.UDPAddr() {
			t.Errorf("%s: refrozen copy: %v %v", tt.host, cp, c.UDPAddr())
		}
		if ap2, _ := b.AddrPort(); ap2 != ap {
			t.Errorf("%s: the original changed to %v", tt.host, ap2)
		}
	}
}
