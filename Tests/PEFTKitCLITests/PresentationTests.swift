import Testing
@testable import PEFTKitCLI

@Test func countsAreGroupedAndShortened() {
    #expect(NumberFormatting.grouped(0) == "0")
    #expect(NumberFormatting.grouped(999) == "999")
    #expect(NumberFormatting.grouped(1000) == "1,000")
    #expect(NumberFormatting.grouped(1_100_048_384) == "1,100,048,384")
    #expect(NumberFormatting.shortCount(999) == nil)
    #expect(NumberFormatting.shortCount(1000) == "1.00 K")
    #expect(NumberFormatting.shortCount(12_615_680) == "12.6 M")
    #expect(NumberFormatting.shortCount(125_000_000) == "125 M")
    #expect(NumberFormatting.shortCount(999_999) == "1.00 M")
    #expect(NumberFormatting.shortCount(1_100_048_384) == "1.10 B")
}

@Test func byteSizesUsePowersOf1024() {
    #expect(NumberFormatting.bytes(0) == "0 B")
    #expect(NumberFormatting.bytes(1023) == "1023 B")
    #expect(NumberFormatting.bytes(1024) == "1.00 KiB")
    #expect(NumberFormatting.bytes(131_072_000) == "125 MiB")
    #expect(NumberFormatting.bytes(2_200_096_768) == "2.05 GiB")
    #expect(NumberFormatting.bytes(1024 * 1024 - 1) == "1.00 MiB")
}

@Test func tablesAlignTextLeftAndNumbersRight() {
    var table = TextTable([.init(title: "NAME", alignment: .left), .init(title: "SIZE", alignment: .right)])
    table.append(["a", "1 B"])
    table.appendNote("… 1 more")
    table.append(["longer.name", "12.0 MiB"])
    #expect(table.rendered() == """
        NAME             SIZE
        a                 1 B
        … 1 more
        longer.name  12.0 MiB

        """)
}

@Test func untrustedTextHasControlAndBidiCharactersEscaped() {
    #expect(TerminalText.escaped("plain.name_ünïcode") == "plain.name_ünïcode")
    #expect(TerminalText.escaped("a\u{1b}[31mb\nc\u{7f}\u{85}") == "a\\u{1b}[31mb\\u{a}c\\u{7f}\\u{85}")
    #expect(TerminalText.escaped("abc\u{202e}fed") == "abc\\u{202e}fed")
    #expect(TerminalText.escaped("abcdef", limit: 3) == "abc…")
    #expect(TerminalText.escaped("abc", limit: 3) == "abc")
}
