package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
)

func rss() string {
	b, _ := os.ReadFile("/proc/self/status")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS") || strings.HasPrefix(l, "RssAnon") || strings.HasPrefix(l, "RssFile") {
			out = append(out, strings.Join(strings.Fields(l), " "))
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return strings.Join(out, ", ") + fmt.Sprintf(", HeapAlloc %d MB, HeapSys %d MB", ms.HeapAlloc>>20, ms.HeapSys>>20)
}

func main() {
	dir := os.Args[1]
	ctx := context.Background()
	if len(os.Args) > 2 {
		s, err := filestore.Open(dir, nil)
		if err != nil {
			panic(err)
		}
		t0 := time.Date(2025, 3, 14, 0, 0, 0, 0, time.UTC)
		for i := 0; i < 10000; i++ {
			actor := fmt.Sprintf("https://h%d.example/users/relay", i)
			s.UpdateSubscriber(ctx, actor, func(p *store.Subscriber, _ bool) error {
				*p = store.Subscriber{ActorID: actor, Host: fmt.Sprintf("h%d.example", i), Protocol: store.ProtocolMastodon, State: store.StateAccepted,
					FollowID: actor + "#follows/12345", Inbox: actor + "/inbox", SharedInbox: fmt.Sprintf("https://h%d.example/inbox", i), CreatedAt: t0, UpdatedAt: t0}
				return nil
			})
		}
		body := make([]byte, 5000)
		for f := 0; f < 10; f++ {
			pid := fmt.Sprintf("https://relay.example/activities/%032d", f)
			ds := make([]store.Delivery, 10000)
			for j := range ds {
				ds[j] = store.Delivery{ID: fmt.Sprintf("%032x", f*10000+j), PayloadID: pid, Inbox: fmt.Sprintf("https://h%d.example/inbox", j),
					Host: fmt.Sprintf("h%d.example", j), Subscriber: fmt.Sprintf("https://h%d.example/users/relay", j), ActivityType: "Create", NotBefore: t0, Created: t0}
			}
			if err := s.Enqueue(ctx, []store.Payload{{ID: pid, Body: body}}, ds); err != nil {
				panic(err)
			}
		}
		s.Close()
		return
	}
	fmt.Println("before:", rss())
	t := time.Now()
	s, err := filestore.Open(dir, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println("open took", time.Since(t))
	runtime.GC()
	fmt.Println("after open:", rss())
	st, _ := s.Stats(ctx)
	fmt.Printf("%+v\n", st)
	s.Close()
}
