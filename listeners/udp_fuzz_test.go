package listeners

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
)

// FuzzUDPConnRead: whatever the datagram sizes and the sizes of the Read
// buffers (and ReadFunc calls) in between, a Read never returns bytes of two
// datagrams, the bytes come in order, and TakeFrames returns the lengths of
// the datagrams reading has started (up to the recording bound), from which
// the bytes read so far split back into those datagrams: what a handler
// behind caddy-l4 relies on.
//
// sizes holds two bytes per datagram (its length, mod 20000); each byte of
// reads is one call: 0 is a ReadFunc, n a Read into 1+80*(n-1) bytes; take
// is after how many calls TakeFrames runs.
func FuzzUDPConnRead(f *testing.F) {
	le := func(n ...uint16) []byte {
		var b []byte
		for _, v := range n {
			b = binary.LittleEndian.AppendUint16(b, v)
		}
		return b
	}
	f.Add(le(3000, 10, 500, 4000), []byte{26, 26, 26, 26, 26}, byte(5)) // TestUDPTakeFrames
	f.Add(le(0, 1, 0, 2), []byte{1, 0, 1, 1, 0}, byte(2))
	f.Add(le(16383, 1, 2, 16384, 7), []byte{255, 255, 255, 0, 0, 1}, byte(200))
	f.Add(bytes.Repeat(le(1000), 130), []byte{}, byte(0))
	f.Add(le(19999, 1), []byte{1, 2, 3, 0}, byte(1))

	f.Fuzz(func(t *testing.T, sizes, reads []byte, take byte) {
		var grams [][]byte
		for i := 0; i+1 < len(sizes); i += 2 {
			n := int(binary.LittleEndian.Uint16(sizes[i:])) % 20000
			g := make([]byte, n)
			for j := range g {
				g[j] = byte(len(grams)*31 + j)
			}
			grams = append(grams, g)
		}
		c := newUDPConn(nil, nil, netip.MustParseAddrPort("127.0.0.1:1"))
		c.mu.Lock()
		for i, g := range grams {
			if ok := c.push(g); ok != (i < udpQueueLen) {
				t.Fatalf("push of datagram %d = %v with a queue of %d", i, ok, udpQueueLen)
			}
		}
		c.mu.Unlock()
		grams = grams[:min(len(grams), udpQueueLen)]

		// the model: datagram di, off bytes of it returned
		di, off := 0, 0
		var started []int // lengths of the datagrams reading has started
		var got []byte    // every byte read, in order
		var frames []int  // what TakeFrames returned
		var gotAtTake []byte
		taken, startedAtTake := false, 0
		buf := make([]byte, 1+80*254)
		for call := 0; di < len(grams); call++ {
			if call == int(take) {
				frames, gotAtTake, taken = c.TakeFrames(nil), slices.Clone(got), true
				startedAtTake = len(started)
			}
			if off == 0 {
				started = append(started, len(grams[di]))
			}
			want := grams[di][off:]
			op := byte(1)
			if call < len(reads) {
				op = reads[call]
			}
			var p []byte
			if op == 0 {
				if err := c.ReadFunc(func(q []byte) { p = slices.Clone(q) }); err != nil {
					t.Fatal(err)
				}
			} else {
				n, err := c.Read(buf[:1+80*(int(op)-1)])
				if err != nil {
					t.Fatal(err)
				}
				p = buf[:n]
			}
			if len(p) > len(want) || (len(p) < len(want) && op == 0) || (len(p) < len(want) && len(p) < 1+80*(int(op)-1)) {
				t.Fatalf("call %d (op %d) returned %d bytes of datagram %d, whose rest is %d bytes", call, op, len(p), di, len(want))
			}
			if !bytes.Equal(p, want[:len(p)]) {
				t.Fatalf("call %d returned bytes that are not the next ones of datagram %d", call, di)
			}
			got = append(got, p...)
			if off += len(p); off == len(grams[di]) {
				di, off = di+1, 0
			}
		}
		if q := c.queued(); q != 0 {
			t.Fatalf("%d datagrams still queued after reading all", q)
		}
		if !taken {
			frames, gotAtTake = c.TakeFrames(nil), got
			startedAtTake = len(started)
		}
		if again := c.TakeFrames(nil); len(again) != 0 {
			t.Fatalf("second TakeFrames = %v, want none", again)
		}

		// recording stops with the datagram that reaches udpMaxRecorded
		want, sum := []int{}, 0
		for _, n := range started[:startedAtTake] {
			if sum >= udpMaxRecorded {
				break
			}
			want = append(want, n)
			sum += n
		}
		if !slices.Equal(frames, want) {
			t.Fatalf("TakeFrames = %v, want %v (started %v, taken after %d calls)", frames, want, started[:startedAtTake], take)
		}
		// the bytes read before TakeFrames split into those frames: each
		// whole frame is its datagram, the last may be cut short
		rest := gotAtTake
		for i, n := range frames {
			if n > 0 && len(rest) == 0 {
				t.Fatalf("frame %d: no bytes left of %d read", i, len(gotAtTake))
			}
			k := min(n, len(rest))
			if k < n && i != len(frames)-1 {
				t.Fatalf("frame %d of %d bytes cut short before the last frame", i, n)
			}
			if !bytes.Equal(rest[:k], grams[i][:k]) {
				t.Fatalf("frame %d does not hold datagram %d", i, i)
			}
			rest = rest[k:]
		}
		if sum < udpMaxRecorded && len(rest) != 0 {
			t.Fatalf("%d bytes read beyond the recorded frames %v", len(rest), frames)
		}
	})
}
