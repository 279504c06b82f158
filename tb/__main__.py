from tb.cli import main

raise SystemExit(main())
