package cluster

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeBlock(t *testing.T) {
	hosts := []string{"127.0.0.1", "127.0.0.2"}
	first, err := FreeBlock(21, hosts...)
	if err != nil {
		t.Fatal(err)
	}
	if first < freeBlockLow || first+21 > freeBlockHigh {
		t.Fatalf("block %d-%d outside %d-%d", first, first+20, freeBlockLow, freeBlockHigh-1)
	}
	// The sockets were closed: the block can be bound.
	if err := checkBlock(first, 21, hosts); err != nil {
		t.Fatalf("block %d: %v", first, err)
	}
	// A port in use makes its block fail the check.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(first+20)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := checkBlock(first, 21, hosts); err == nil {
		t.Errorf("block %d passed the check with TCP 127.0.0.2:%d in use", first, first+20)
	}
	for _, n := range []int{0, -1, freeBlockHigh} {
		if _, err := FreeBlock(n, hosts...); err == nil {
			t.Errorf("FreeBlock(%d) succeeded", n)
		}
	}
	if _, err := FreeBlock(1); err == nil {
		t.Error("FreeBlock without hosts succeeded")
	}
}
