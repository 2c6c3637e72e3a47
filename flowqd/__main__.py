from flowqd.cli import main

raise SystemExit(main())
